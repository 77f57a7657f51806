"""Distillation methods: SAGE-OPD, its ablations and baselines, over plain tensors."""

from methods.estimators import ESTIMATORS, reverse_kl, token_loss

__all__ = ["ESTIMATORS", "reverse_kl", "token_loss"]
