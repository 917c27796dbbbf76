"""Scores, selectors and the Selection contract."""
from .selection import Selection

__all__ = ["Selection"]
