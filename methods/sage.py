"""SAGE-OPD and its ablations: each ablation is `sage` with one switch flipped, not a copy."""

from __future__ import annotations

from methods.method import Method
from methods.registry import register, with_knobs

# Defaults = our reading of the paper (sage_opd.md): judge gate, per-token teacher confidence,
# scale-preserving normalization over the whole optimizer batch.
SAGE = dict(name="sage", trajectory_source="student", estimator="full_kl", gate="judge",
            confidence="token", normalize="scale_preserving")  # fmt: skip


def _sage_with(name: str, overrides: dict, **switch) -> Method:
    return Method(**with_knobs({**SAGE, "name": name}, overrides, fixed=switch))


@register("sage")
def sage(**overrides) -> Method:
    """SAGE-OPD: judge-gated, confidence-weighted, scale-preserving reverse-KL distillation."""
    return _sage_with("sage", overrides)


@register("no_gate")
def no_gate(**overrides) -> Method:
    """SAGE without the judge: every turn has gate 1."""
    return _sage_with("no_gate", overrides, gate="none")


@register("no_conf")
def no_conf(**overrides) -> Method:
    """SAGE without teacher-confidence token weights."""
    return _sage_with("no_conf", overrides, confidence="none")


@register("no_norm")
def no_norm(**overrides) -> Method:
    """SAGE without the rescale: loss = (1/N) sum w * l, so skipped turns shrink the loss scale."""
    return _sage_with("no_norm", overrides, normalize="mean")


@register("oracle_gate")
def oracle_gate(**overrides) -> Method:
    """SAGE gated by the environment verifier's labels: an upper bound, NOT verifier-free."""
    return _sage_with("oracle_gate", overrides, gate="oracle")
