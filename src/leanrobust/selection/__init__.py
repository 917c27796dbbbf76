"""Scores, selectors and the Selection contract."""
from ..selection_contract import Selection

__all__ = ["Selection"]
