"""Baselines: dense on-policy distillation (opd), GKD's generalized JSD (gkd), sft, and guided_opd."""

from __future__ import annotations

from methods.method import Method
from methods.registry import register, with_knobs

# Dense OPD: every response token weighted 1, loss = mean over the step's response tokens.
OPD = dict(name="opd", trajectory_source="student", estimator="full_kl", gate="none",
           confidence="none", normalize="mean")  # fmt: skip


@register("opd")
def opd(**overrides) -> Method:
    """On-policy distillation: mean token loss (full-vocab reverse KL by default)."""
    return Method(**with_knobs(OPD, overrides, fixed=dict(gate="none", confidence="none")))


@register("gkd")
def gkd(**overrides) -> Method:
    """opd with GKD's generalized JSD (knob beta; 0 forward KL, 1 reverse KL)."""
    fixed = dict(gate="none", confidence="none", estimator="jsd")
    return Method(**with_knobs({**OPD, "name": "gkd"}, overrides, fixed=fixed))


@register("sft")
def sft(sft_source: str = "teacher", **overrides) -> Method:
    """Off-policy SFT on teacher (or expert) trajectories: mean NLL of their tokens."""
    if sft_source not in ("teacher", "expert"):
        raise ValueError(f"sft_source must be 'teacher' or 'expert', got {sft_source!r}")
    base = {**OPD, "name": "sft", "trajectory_source": sft_source, "estimator": "nll"}
    fixed = dict(gate="none", confidence="none", estimator="nll")
    return Method(**with_knobs(base, overrides, fixed=fixed))


# Guided-OPD (methods/guidance.py): the OPD loss (full-vocab reverse KL, mean over the student's tokens)
GUIDED_OPD = dict(name="guided_opd", trajectory_source="student", estimator="full_kl", gate="none",
                  confidence="none", normalize="mean", guide_start=0.5, guide_end=0.8,
                  guide_shape="linear")  # fmt: skip


@register("guided_opd")
def guided_opd(**overrides) -> Method:
    """Guided-OPD (arXiv 2606.15912): opd whose training rollouts mix in teacher turns with a
    chance decaying to 0 (methods/guidance.py says what is the paper's and what is our reading)."""
    return Method(**with_knobs(GUIDED_OPD, overrides, fixed=dict(gate="none", confidence="none")))
