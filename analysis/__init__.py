"""Paper tables and plots from run records on disk (no torch): `python -m analysis <sweep dir>`."""

from analysis.collect import METHOD_NAMES, Collection, collect
from analysis.summary import summarize

__all__ = ["METHOD_NAMES", "Collection", "collect", "summarize"]
