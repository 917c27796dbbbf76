"""leanrobust: adversarially robust image classifiers with less data and less compute."""
__version__ = "0.1.0"

from .api import benchmark, export, load, load_test_set, model_info  # noqa: E402

__all__ = ["benchmark", "export", "load", "load_test_set", "model_info", "__version__"]
