"""The public Python API in one place, for `leanrobust/__init__.py` and the command line: each job lives in its own
module (model_file, export_run, user_model, threat_model, eval_target, benchmarking, dry_run); this re-exports them."""
from __future__ import annotations

from .benchmarking import DEFAULT_ATTACKS, benchmark
from .dry_run import dry_run
from .eval_target import EvalTarget, eval_target, load_test_set
from .export_run import export
from .model_file import EXPORT_KEYS, MODEL_KEY, SPEC_KEYS, load, load_state, model_info, read_spec
from .threat_model import DEFAULT_EPS, check_eps, default_eps, norm_name
from .user_model import model_from_factory, probe

__all__ = ["DEFAULT_ATTACKS", "DEFAULT_EPS", "EXPORT_KEYS", "EvalTarget", "MODEL_KEY", "SPEC_KEYS", "benchmark",
           "check_eps", "default_eps", "dry_run", "eval_target", "export", "load", "load_state", "load_test_set",
           "model_from_factory", "model_info", "norm_name", "probe", "read_spec"]
