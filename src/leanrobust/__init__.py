"""leanrobust: adversarially robust image classifiers with less data and less compute."""
__version__ = "0.1.0"

from .api import load  # noqa: E402

__all__ = ["load", "__version__"]
