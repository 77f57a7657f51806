"""Distillation methods over plain tensors: SAGE-OPD, its ablations and baselines (sage_opd.md)."""

from methods import baselines, multiturn, sage  # noqa: F401  (importing registers the methods)
from methods.batch import LABELS, MethodBatch, Totals
from methods.estimators import ESTIMATORS, TOKEN_LOSSES, reverse_kl, token_loss
from methods.method import Method
from methods.registry import available, get, register
from methods.stats import merge_stats

__all__ = [
    "ESTIMATORS", "LABELS", "TOKEN_LOSSES", "Method", "MethodBatch", "Totals", "available",
    "get", "merge_stats", "register", "reverse_kl", "token_loss",
]  # fmt: skip
