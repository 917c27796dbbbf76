"""The experiment schema: one validated structure with every hyper-parameter visible.
Unknown keys and wrong types are rejected naming the key (pydantic, extra='forbid')."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        0, description="seed of the held-out split, drawn from the whole real training set before train_subset, so "
                       "every run on a dataset is validated on the same images whatever its seed; null: the run's "
                       "seed, drawn after train_subset (how runs written before this key were split)")
    pool: Optional[str] = Field(None, description="npz that replaces the real training pool (e.g. DM-condensed "
                                                 "images); validation still comes from the dataset's training split")
    generated: Optional[str] = Field(None, description="npz of generated images mixed into every batch")
    gen_fraction: float = Field(0.7, ge=0.0, le=1.0, description="generated share of each batch (Wang et al. 2023)")
    selection: Optional[str] = Field(None, description="Selection npz (indices, weight, eps) over the training pool")
    weighting: Literal["loss", "sample"] = Field(
        "loss", description="how selection weights act: 'loss' scales each sample's loss (exact per batch); 'sample' "
                            "draws samples with probability proportional to weight and trains them with weight 1 (same "
                            "expected gradient, bounded per batch when a few weights are large, e.g. MFC centres)")
    augment: bool = True
    crop_pad: Optional[int] = Field(None, ge=0, description="default from the dataset")
    flip: Optional[bool] = Field(None, description="default from the dataset (off for digits/clothes)")


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


class ValidationConfig(_Strict):
    """The learning curve: held-out clean and PGD robust accuracy after every epoch (and every
    `every_grad_evals` training passes), logged with the cumulative compute; chooses the best checkpoint."""
    n: int = Field(2000, ge=0, description="held-out points checked each epoch (0: no curve, no selection, keep last)")
    steps: int = Field(20, ge=1, description="PGD steps of the per-epoch robust check")
    select: Literal["robust", "clean", "last"] = "robust"
    every_grad_evals: Optional[int] = Field(
        None, ge=1, description="also add a curve point each time the training grad evals cross a multiple of this "
                                "(mid-epoch points are logged, never chosen as the best checkpoint)")


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

        bad = [a for a in v if a.strip().lower() != "autoattack" and not ATTACK_RE.match(a.strip().lower())]
        if bad:
            raise ValueError(f"unknown attack(s) {bad}: use pgdK, cwK (K steps, e.g. pgd20, cw20), pgdKxS "
                             "(CE on logits x S, e.g. pgd20x10) or autoattack")
        return v


class RunConfig(_Strict):
    name: str = "run"
    seed: int = 0
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
        managed = {"model", "x", "y", "eps", "weight", "norm", "steps", "step_size", "beta", "label_smoothing",
                   "epoch", "num_epochs"}
        accepted = {n for n, p in sig.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL} - managed
        bad = sorted(set(self.objective.params) - accepted)
        if bad:
            raise ValueError(f"objective.params {bad} not accepted by objective {self.objective.name!r} "
                             f"(set eps/steps/beta/... as objective fields); accepted: {sorted(accepted) or 'none'}")
        return self

    @model_validator(mode="after")
    def _objective_fields_are_used(self, info: ValidationInfo) -> "RunConfig":
        """A non-zero objective.label_smoothing, or a beta set away from its default, with an objective
        that has no such argument (label smoothing: MART, GAIR-AT, MAIL-AT; beta: PGD-AT, ...) would be
        dropped silently: reject it, naming the objectives that take it."""
        import inspect

        from .objectives import OBJECTIVES

        fn = OBJECTIVES.get(self.objective.name)
        if fn is None:
            return self
        default_beta = ObjectiveConfig.model_fields["beta"].default
        used = {"label_smoothing": bool(self.objective.label_smoothing),
                "beta": "beta" in self.objective.model_fields_set and self.objective.beta != default_beta}
        for key in (k for k, on in used.items() if on):
            if key not in inspect.signature(fn).parameters:
                takers = sorted(n for n, f in OBJECTIVES.items() if key in inspect.signature(f).parameters)
                _unused(info, f"objective.{key}={getattr(self.objective, key)} is not used by objective "
                              f"{self.objective.name!r}; objectives with {key}: {', '.join(takers)}")
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


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid config {source}:\n" + "\n".join(lines)


def _parse_value(text: str) -> Any:
    """A --set value is read as YAML so that numbers, booleans, lists and null work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (new keys are caught by validation)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return raw


def validate_config(raw: dict, source: str = "<dict>", *, lenient: bool = False) -> RunConfig:
    """lenient: settings the run would ignore only warn (re-reading an existing run's config); a run
    written before `data.val_seed` existed keeps its split (val_seed null: the run's own seed)."""
    if lenient and isinstance(raw.get("data"), dict) and "val_seed" not in raw["data"]:
        raw = {**raw, "data": {**raw["data"], "val_seed": None}}
    try:
        return RunConfig.model_validate(raw, context={"lenient": lenient})
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, lenient: bool = False) -> RunConfig:
    """Read a YAML config (or the defaults when path is None), apply overrides, validate (lenient: see
    validate_config; for a run directory's own config.yaml)."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source, lenient=lenient)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
