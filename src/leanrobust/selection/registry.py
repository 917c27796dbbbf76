"""The selection methods a config (selection.method) and `leanrobust select` name: one row per method with
its scorer, the end it prunes, its selector and the selection.params it accepts. The training schedule
(schedule.py) and the `select` command both make their Selection through `select_from_scores`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..config_schema import SELECTION_METHODS
from .gradmatch import gradmatch_selection
from .pruning import PRUNE_MODES, select_by_score
from .puma import puma_selection
from .scores import SCORERS
from ..selection_contract import Selection

COMMON_PARAMS = frozenset({"batch_size", "steps"})  # scoring batch, PGD steps of scoring (default: the objective's)


@dataclass(frozen=True)
class MethodSpec:
    """name; scorer: the SCORERS entry whose scores it ranks (None: it ranks no scores); prune: the end pruned
    when the config leaves it to the method (prune 'auto'), None when there is no end; selector: scores ->
    Selection (select_by_score, puma_selection), or for a method without scorer model -> Selection;
    params: the selection.params keys it accepts; selector_params: those of them its selector reads (the
    others go to the scorer); fixed_prune: the selector prunes `prune` and nothing else (naming the other end
    is an error); checks: (SelectionConfig) -> None, raising ValueError for settings the method cannot run."""
    name: str
    scorer: Optional[str]
    prune: Optional[str]
    selector: Callable[..., Selection]
    params: frozenset
    selector_params: frozenset = frozenset()
    fixed_prune: bool = False
    checks: Optional[Callable[[Any], None]] = None

    @property
    def ranks_scores(self) -> bool:
        """The method is its scorer's scores ranked as they are (select_by_score)."""
        return self.selector is select_by_score


def _scorer_params(scorer: str) -> frozenset:
    return frozenset(SCORERS[scorer].params) - {"tracker"}  # the schedule passes the tracker itself


def _two_observations(sc) -> None:
    if sc.start_epoch < 2:
        raise ValueError("selection.method 'forgetting' needs selection.start_epoch >= 2: forgetting events "
                         "are counted from the epochs trained before the selection")


def _ranked(name: str, prune: str, checks: Optional[Callable] = None) -> MethodSpec:
    return MethodSpec(name, name, prune, select_by_score, COMMON_PARAMS | _scorer_params(name), checks=checks)


_PUMA = frozenset({"q", "floor", "scale"})
_GRADMATCH = frozenset({"match_batch", "lam", "atoms_per_step", "adversarial"})

# Which end each score prunes under prune 'auto': margin / kappa are high for easy (far from the boundary,
# robust) samples -> prune highest (PUMA's prune-easy); loss / el2n / grand / pm / forgetting are high for hard
# samples -> prune lowest, i.e. keep the hardest, the choice of loss-based dynamic pruning for speed (the easy
# samples teach the least per pass). random: either end. PUMA always prunes the highest margins (its margins in
# the training norm: no margin_norm); gradmatch matches gradients and ranks no scores.
METHODS: dict[str, MethodSpec] = {m.name: m for m in [
    _ranked("random", "highest"),
    _ranked("margin", "highest"),
    _ranked("kappa", "highest"),
    _ranked("loss", "lowest"),
    _ranked("el2n", "lowest"),
    _ranked("grand", "lowest"),
    _ranked("pm", "lowest"),
    _ranked("forgetting", "lowest", checks=_two_observations),
    MethodSpec("puma", "margin", "highest", puma_selection,
               COMMON_PARAMS | (_scorer_params("margin") - {"margin_norm"}) | _PUMA, _PUMA, fixed_prune=True),
    MethodSpec("gradmatch", None, None, gradmatch_selection, COMMON_PARAMS | _GRADMATCH, _GRADMATCH),
]}
if tuple(METHODS) != SELECTION_METHODS:  # config_schema.py validates selection.method against its own names
    raise RuntimeError(f"selection/registry.py METHODS {tuple(METHODS)} differ from config_schema.SELECTION_METHODS "
                       f"{SELECTION_METHODS}: add or remove a method in both")


def method_spec(method: str) -> MethodSpec:
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown selection.method {method!r}; expected 'none' or one of: "
                         f"{', '.join(METHODS)}") from None


def _dropping(setting: str, value: str) -> str:
    """How a setting is dropped: 'selection.prune: lowest' in a config, '--prune lowest' on the command line."""
    return f"{setting} {value}" if setting.startswith("-") else f"{setting}: {value}"


def resolve_prune(method: Optional[str], prune: Optional[str], *, setting: str = "selection.prune",
                  subject: Optional[str] = None) -> str:
    """The end pruned: `prune` when it is 'highest'/'lowest' and the method allows it, the method's own end for
    None or 'auto'. method None: scores of no known method, so prune must name the end. setting and subject name
    the prune setting and what asked for the method in the messages (a config by default; the command line
    passes '--prune' and '--puma', or the scores file)."""
    if prune not in PRUNE_MODES and prune not in (None, "auto"):
        raise ValueError(f"{setting} must be 'highest', 'lowest' or 'auto', got {prune!r}")
    if method is None:
        if prune in PRUNE_MODES:
            return prune
        raise ValueError(f"{setting} auto: {subject or 'the scores name no method'}; "
                         f"pass {setting} highest or {setting} lowest")
    spec = method_spec(method)
    if prune in (None, "auto"):
        return spec.prune or "highest"
    if spec.prune is None:
        raise ValueError(f"{setting} {prune!r} has no meaning for {method!r} (it does not rank scores); "
                         f"leave {setting} at 'auto'")
    if spec.fixed_prune and prune != spec.prune:
        raise ValueError(f"{subject or f'selection.method {method!r}'} always prunes the {spec.prune} "
                         f"{spec.scorer}s; drop {_dropping(setting, prune)}")
    return prune


def check_selection(sc) -> MethodSpec:
    """Everything a SelectionConfig (method other than 'none') must get right before training starts: a known
    method, params it accepts, its own checks and the end it prunes."""
    spec = method_spec(sc.method)
    bad = set(sc.params) - spec.params
    if bad:
        raise ValueError(f"selection.params {sorted(bad)} not accepted by method {sc.method!r}; "
                         f"accepted: {sorted(spec.params)}")
    if spec.checks is not None:
        spec.checks(sc)
    resolve_prune(sc.method, sc.prune)
    return spec


def select_from_scores(method: Optional[str], scores, labels, *, fraction: float, prune: Optional[str] = "auto",
                       class_balanced: bool = True, eps: float, params: Optional[dict] = None) -> Selection:
    """The Selection a method makes from per-sample scores of a pool: its selector with the resolved prune end,
    class balance, the training eps and the selector's own params (the scorer's are ignored here). method None:
    scores of no known method, ranked at the prune end given."""
    end = resolve_prune(method, prune)
    spec = METHODS[method] if method is not None else None
    if spec is None or spec.ranks_scores:
        return select_by_score(scores, labels, fraction=fraction, prune=end, class_balanced=class_balanced, eps=eps)
    if spec.scorer is None:
        raise ValueError(f"selection.method {method!r} selects from the model, not from scores")
    kw = {k: v for k, v in (params or {}).items() if k in spec.selector_params}
    return spec.selector(scores, labels, fraction=fraction, class_balanced=class_balanced, eps=eps, **kw)
