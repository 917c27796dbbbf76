"""The experiment schema: one validated structure with every hyper-parameter visible.
Unknown keys and wrong types are rejected naming the key (pydantic, extra='forbid'), with a "did you
mean" for a mistyped key or choice; so are settings the run would ignore, non-finite numbers and booleans
where numbers belong. Reading files and overrides: config.py."""
from __future__ import annotations

import difflib
import typing
import warnings
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


def did_you_mean(word: Any, choices, cutoff: float = 0.6) -> str:
    """' (did you mean 'x'?)' for the closest of `choices` to a mistyped `word`, else ''."""
    if not isinstance(word, str):
        return ""
    best = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean {best[0]!r}?)" if best else ""


def _takes_number(annotation: Any) -> bool:
    """True for int/float annotations, also inside Optional[...] and list[...]."""
    if annotation in (int, float):
        return True
    return any(_takes_number(a) for a in typing.get_args(annotation) if a is not bool)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        """pydantic reads `epochs: true` as 1: a boolean where a number belongs is a mistake, not a count."""
        field = cls.model_fields.get(info.field_name)
        if field is not None and _takes_number(field.annotation) and bool not in typing.get_args(field.annotation):
            if isinstance(v, bool) or isinstance(v, list) and any(isinstance(x, bool) for x in v):
                raise ValueError("expected a number, got a boolean")
        return v


class DataConfig(_Strict):
    dataset: Literal["fashion_mnist", "mnist", "cifar10", "cifar100", "npz"] = "fashion_mnist"
    path: Optional[str] = Field(None, description="npz file when dataset is 'npz' (train split)")
    test_path: Optional[str] = Field(None, description="npz test file when dataset is 'npz'")
    num_classes: Optional[int] = Field(None, ge=2, description="needed for npz datasets")
    root: Optional[str] = Field(None, description="data directory searched first")
    download: bool = True
    train_subset: Optional[int] = Field(None, ge=1, description="class-balanced random subset of the real training set")
    val_size: int = Field(2000, ge=0, description="held-out real training images: the per-epoch curve and model selection")
    val_seed: Optional[int] = Field(
        0, ge=0, lt=2**32,
        description="seed of the held-out split, drawn from the whole real training set before train_subset, so "
                       "every run on a dataset is validated on the same images whatever its seed; null: the run's "
                       "seed, drawn after train_subset (how runs written before this key were split)")
    pool: Optional[str] = Field(None, description="npz that replaces the real training pool (e.g. DM-condensed "
                                                 "images); validation still comes from the dataset's training split")
    generated: Optional[str] = Field(None, description="generated images mixed into every batch: an npz, or a folder "
                                                      "of npz / .npy shards read per batch (pools larger than memory)")
    gen_fraction: float = Field(0.7, ge=0.0, le=1.0, description="generated share of each batch (Wang et al. 2023)")
    selection: Optional[str] = Field(None, description="Selection npz (indices, weight, eps) over the training pool")
    weighting: Literal["loss", "sample"] = Field(
        "loss", description="how selection weights act: 'loss' scales each sample's loss (exact per batch); 'sample' "
                            "draws samples with probability proportional to weight and trains them with weight 1 (same "
                            "expected gradient, bounded per batch when a few weights are large, e.g. MFC centres)")
    augment: bool = True
    crop_pad: Optional[int] = Field(None, ge=0, description="default from the dataset")
    flip: Optional[bool] = Field(None, description="default from the dataset (off for digits/clothes)")

    @model_validator(mode="after")
    def _fields_in_use(self, info: ValidationInfo) -> "DataConfig":
        """Settings this data config would ignore: npz-only fields with a built-in dataset, gen_fraction
        without generated data, flip/crop_pad with augmentation off."""
        if self.dataset != "npz":
            for key in ("path", "test_path", "num_classes"):
                if getattr(self, key) is not None:
                    _unused(info, f"data.{key} is only read for data.dataset: npz (this config uses the built-in "
                                  f"{self.dataset!r}); drop it, or set data.dataset: npz")
        if not self.generated and self.gen_fraction != type(self).model_fields["gen_fraction"].default:
            _unused(info, f"data.gen_fraction={self.gen_fraction} without data.generated: there is no generated "
                          "data to mix in; set data.generated to an npz of generated images, or drop gen_fraction")
        if not self.augment:
            for key in ("flip", "crop_pad"):
                if getattr(self, key) is not None:
                    _unused(info, f"data.{key}={getattr(self, key)} with data.augment: false (no augmentation runs); "
                                  f"drop data.{key}, or set data.augment: true")
        return self


def _unused(info: ValidationInfo, message: str) -> None:
    """A setting that would be ignored: an error for a new config; a warning when re-reading a run
    directory's config.yaml (validate_config(..., lenient=True)), so that runs written before the check
    can still be resumed and evaluated, as they were trained."""
    if info.context and info.context.get("lenient"):
        warnings.warn(f"{message} (ignored, as when this run was trained)", stacklevel=2)
        return
    raise ValueError(message)


class ModelConfig(_Strict):
    name: Literal["smallcnn", "preact_resnet18", "resnet18", "wideresnet"] = "smallcnn"
    width: float = Field(1.0, gt=0, description="SmallCNN width multiplier")
    depth: int = Field(28, ge=10, description="WideResNet depth")
    widen_factor: int = Field(10, ge=1, description="WideResNet width")
    activation: Literal["relu", "silu"] = "relu"
    dropout: Optional[float] = Field(None, ge=0.0, lt=1.0, description="SmallCNN / WideResNet dropout "
                                     "(default: the paper's, 0.5 in SmallCNN's classifier, 0 in WideResNet)")

    @model_validator(mode="after")
    def _fields_of_this_model(self, info: ValidationInfo) -> "ModelConfig":
        """A field changed from its default for a model that does not have it (width on a ResNet) would be
        ignored: reject it. (Defaults pass, so a resolved config.yaml, which lists every field, reloads.)"""
        uses = {"smallcnn": {"width", "dropout"}, "wideresnet": {"depth", "widen_factor", "activation", "dropout"},
                "preact_resnet18": set(), "resnet18": set()}[self.name]
        unused = sorted(k for k, f in type(self).model_fields.items()
                        if k != "name" and k not in uses and getattr(self, k) != f.default)
        if unused:
            _unused(info, f"model.{', model.'.join(unused)} not used by model {self.name!r} "
                          f"(it takes: {', '.join(sorted(uses)) or 'no options'})")
        return self


class ObjectiveConfig(_Strict):
    name: Literal["erm", "pgd_at", "trades", "mart", "fgsm_rs", "gair_at", "gair_trades", "mail_at",
                  "gaussian_noise", "bullet_pgd_at", "bullet_trades"] = "pgd_at"
    norm: Literal["linf", "l2"] = "linf"
    eps: float = Field(0.1, ge=0.0)
    steps: int = Field(10, ge=1)
    step_size: Optional[float] = Field(None, gt=0, description="relative to eps; default 2.5/steps")
    beta: float = Field(6.0, ge=0.0, description="TRADES / MART / GAIR-TRADES trade-off")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    params: dict[str, Any] = Field(default_factory=dict, description="method-specific keyword arguments")

    PASSED: ClassVar[tuple[str, ...]] = ("norm", "steps", "step_size", "beta", "label_smoothing")

    def managed_kwargs(self, *, epoch: int, num_epochs: int) -> dict[str, Any]:
        """What the trainer passes every objective itself (objective.params may not name them): the PASSED
        fields and the training progress (0-based epoch, optim.epochs)."""
        return {**{k: getattr(self, k) for k in self.PASSED}, "epoch": epoch, "num_epochs": num_epochs}

    def call_kwargs(self, *, epoch: int, num_epochs: int) -> dict[str, Any]:
        """The keyword arguments of an objective call: managed_kwargs and objective.params (call_objective
        hands each function only those it declares)."""
        return {**self.managed_kwargs(epoch=epoch, num_epochs=num_epochs), **self.params}

    @model_validator(mode="after")
    def _eps_in_the_box(self) -> "ObjectiveConfig":
        """Inputs lie in [0,1]: an Linf radius above 1 allows every image (8/255 is written 0.0314)."""
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(f"objective.eps={self.eps:g} with norm linf exceeds 1, the whole [0,1] input range "
                             "(inputs are in [0,1], not [0,255]: 8/255 is eps: 0.0314)")
        return self


class OptimConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["constant", "piecewise", "cosine", "onecycle"] = "piecewise"
    milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75], description="fractions of training (piecewise)")
    gamma: float = Field(0.1, gt=0, le=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    ema_tau: Optional[float] = Field(None, gt=0.0, lt=1.0, description="EMA of weights, decay min(tau, (1+t)/(10+t))")
    grad_clip: Optional[float] = Field(None, gt=0)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < m < 1.0 for m in v) or sorted(v) != v:
            raise ValueError("milestones must be increasing fractions of training in (0, 1)")
        return v

    @model_validator(mode="after")
    def _fields_in_use(self, info: ValidationInfo) -> "OptimConfig":
        """milestones/gamma act only in the piecewise schedule, nesterov only with momentum."""
        if self.schedule != "piecewise":
            unused = [k for k in ("milestones", "gamma") if getattr(self, k) != type(self).model_fields[k].get_default(
                call_default_factory=True)]
            if unused:
                _unused(info, f"optim.{' and optim.'.join(unused)} only act{'s' * (len(unused) == 1)} in the "
                              "piecewise schedule, not in "
                              f"optim.schedule: {self.schedule}; drop them, or set optim.schedule: piecewise")
        if self.nesterov and self.momentum == 0:
            _unused(info, "optim.nesterov: true with optim.momentum: 0 (Nesterov needs momentum); set a momentum, "
                          "or drop nesterov")
        return self


# the methods selection.method can name, in the order messages list them: selection/registry.py's METHODS has
# exactly these keys (checked when it is imported), so the config validates names without importing the methods
SELECTION_METHODS = ("random", "margin", "kappa", "loss", "el2n", "grand", "pm", "forgetting", "puma", "gradmatch")


class SelectionConfig(_Strict):
    """Which pool samples train, how much each counts and how hard each is attacked (issue: data selection)."""
    method: str = Field("none", description="none, or a scorer/selector name (see `leanrobust select --help`)")
    fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of the pool kept")
    prune: Literal["auto", "highest", "lowest"] = Field(
        "auto", description="which scores are removed; auto: the method's own end (margin/kappa/puma: highest, "
                            "loss/el2n/grand/pm/forgetting: lowest)")
    class_balanced: bool = True
    every: Optional[int] = Field(None, ge=1, description="re-select every R epochs (dynamic); None: once, before training")
    start_epoch: int = Field(0, ge=0, description="train on the full pool before the first selection")
    params: dict[str, Any] = Field(default_factory=dict, description="method-specific keyword arguments")

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        """An unknown method is an error now, not after the data is loaded."""
        if v != "none" and v not in SELECTION_METHODS:
            raise ValueError(f"unknown selection.method {v!r}{did_you_mean(v, ('none', *SELECTION_METHODS))}; "
                             f"expected 'none' or one of: {', '.join(SELECTION_METHODS)}")
        return v

    @model_validator(mode="after")
    def _fields_in_use(self, info: ValidationInfo) -> "SelectionConfig":
        """Without a method nothing is selected: every other selection field would be ignored."""
        if self.method == "none":
            unused = [k for k, f in type(self).model_fields.items()
                      if k != "method" and getattr(self, k) != f.get_default(call_default_factory=True)]
            if unused:
                _unused(info, f"selection.{', selection.'.join(unused)} set but selection.method is 'none' (nothing "
                              "is selected); set selection.method, or drop them")
        return self


class ValidationConfig(_Strict):
    """The learning curve: held-out clean and PGD robust accuracy after every epoch (and every
    `every_grad_evals` training passes), logged with the cumulative compute; chooses the best checkpoint."""
    n: int = Field(2000, ge=0, description="held-out points checked each epoch (0: no curve, no selection, keep last)")
    steps: int = Field(20, ge=1, description="PGD steps of the per-epoch robust check")
    select: Literal["robust", "clean", "last"] = "robust"
    every_grad_evals: Optional[int] = Field(
        None, ge=1, description="also add a curve point each time the training grad evals cross a multiple of this "
                                "(mid-epoch points are logged, never chosen as the best checkpoint)")
    every_epochs: int = Field(
        1, ge=1, description="epoch-end curve points every this many epochs and after the last (runs of many short "
                             "epochs, e.g. a few hundred kept images); the best checkpoint is chosen among them")


class EvalConfig(_Strict):
    n: Optional[int] = Field(None, ge=1, description="test points (None: the whole test set)")
    attacks: list[str] = Field(default_factory=lambda: ["pgd20", "cw20", "pgd20x10", "autoattack"],
                               description="pgdK, cwK, pgdKxS (CE on logits x S: a gradient-masking check), autoattack")
    autoattack_n: Optional[int] = Field(None, ge=1, description="test points for AutoAttack (None: same as n)")
    autoattack_version: Literal["standard", "fast"] = Field(
        "standard", description="standard: APGD-CE, APGD-T, FAB-T, Square; fast: APGD-CE + APGD-T (its robust "
                                "accuracy is an upper bound on the standard version's)")
    batch_size: int = Field(500, ge=1)

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, v: list[str]) -> list[str]:
        """An unknown attack name is an error now, not after all of training."""
        from .masking import ATTACK_RE  # torch-free: the names evaluate.parse_attacks accepts

        def known(a: str) -> bool:
            m = ATTACK_RE.match(a.strip().lower())
            return a.strip().lower() == "autoattack" or bool(m and int(m.group(2)) >= 1 and int(m.group(3) or 1) >= 1)

        bad = [a for a in v if not known(a)]
        if bad:
            hint = did_you_mean(bad[0].strip().lower(), ["autoattack", "pgd20", "cw20", "pgd20x10"])
            raise ValueError(f"unknown attack(s) {bad}{hint}: use pgdK, cwK (K >= 1 steps, e.g. pgd20, cw20), "
                             "pgdKxS (CE on logits x S, e.g. pgd20x10) or autoattack")
        return v


class LoggingConfig(_Strict):
    """Where the per-epoch metrics go besides metrics.jsonl and metrics.csv (always written)."""
    tensorboard: bool = Field(False, description="also write them as TensorBoard scalars to RUN/tensorboard/ "
                                                 "(needs `pip install leanrobust[tensorboard]`)")


class RunConfig(_Strict):
    name: str = "run"
    seed: int = Field(0, ge=0, lt=2**32, description="0 .. 2^32-1 (numpy's seed range)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = Field(True, description="bf16 autocast on CUDA (CPU runs stay fp32)")
    channels_last: bool = Field(True, description="train in NHWC layout (faster cuDNN kernels with AMP on CUDA; "
                                                  "on the CPU about 1.03x for SmallCNN PGD-AT on 2 cores)")
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads")
    progress: bool = True
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _objective_params_known(self) -> "RunConfig":
        """objective.params must name keyword arguments of the chosen objective (a typo would
        otherwise be dropped silently) and not the fields the trainer already passes."""
        import inspect

        from .objectives import OBJECTIVES

        fn = OBJECTIVES.get(self.objective.name)
        if fn is None or not self.objective.params:
            return self
        sig = inspect.signature(fn).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values()):
            return self
        contract = set(list(sig)[:5])  # fn(model, x, y, eps, weight, **hyper-parameters)
        managed = contract | set(self.objective.managed_kwargs(epoch=0, num_epochs=1))
        accepted = {n for n, p in sig.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL} - managed
        bad = sorted(set(self.objective.params) - accepted)
        if bad:
            hint = did_you_mean(bad[0], accepted | managed)
            raise ValueError(f"objective.params {bad} not accepted by objective {self.objective.name!r}{hint} "
                             f"(set eps/steps/beta/... as objective fields); accepted: {sorted(accepted) or 'none'}")
        return self

    @model_validator(mode="after")
    def _objective_fields_are_used(self, info: ValidationInfo) -> "RunConfig":
        """A non-zero objective.label_smoothing, a beta set away from its default, or a step_size, with an
        objective that has no such argument (label smoothing: MART, GAIR-AT, MAIL-AT; beta: PGD-AT, ...) would be
        dropped silently: reject it, naming the objectives that take it."""
        import inspect

        from .objectives import OBJECTIVES

        fn = OBJECTIVES.get(self.objective.name)
        if fn is None:
            return self
        default_beta = ObjectiveConfig.model_fields["beta"].default
        # (objective.steps is not checked: shared base configs set it for every objective of a table, erm included)
        used = {"label_smoothing": bool(self.objective.label_smoothing),
                "beta": "beta" in self.objective.model_fields_set and self.objective.beta != default_beta,
                "step_size": self.objective.step_size is not None}
        for key in (k for k, on in used.items() if on):
            if key not in inspect.signature(fn).parameters:
                takers = sorted(n for n, f in OBJECTIVES.items() if key in inspect.signature(f).parameters)
                _unused(info, f"objective.{key}={getattr(self.objective, key)} is not used by objective "
                              f"{self.objective.name!r}; objectives with {key}: {', '.join(takers)}")
        return self

    @model_validator(mode="after")
    def _sample_weighting_needs_a_selection(self, info: ValidationInfo) -> "RunConfig":
        """data.weighting acts on a selection's weights; with neither data.selection nor selection.method
        every weight is 1 and the setting is ignored."""
        if self.data.weighting == "sample" and not self.data.selection and self.selection.method == "none":
            _unused(info, "data.weighting: sample without a selection (data.selection or selection.method): "
                          "there are no weights to draw by; drop it, or give a selection")
        return self

    @model_validator(mode="after")
    def _one_source_of_selection(self, info: ValidationInfo) -> "RunConfig":
        """A fixed data.selection file and a selection.method that re-selects from the whole pool
        cannot both apply (the method would silently discard the file)."""
        if self.data.selection and self.selection.method != "none":
            _unused(info, f"data.selection ({self.data.selection}) and selection.method="
                          f"{self.selection.method!r} both choose the training set; keep one")
        return self

    @model_validator(mode="after")
    def _npz_needs_paths(self) -> "RunConfig":
        if self.data.dataset == "npz" and (not self.data.path or not self.data.num_classes):
            raise ValueError("data.dataset 'npz' needs data.path and data.num_classes")
        return self
