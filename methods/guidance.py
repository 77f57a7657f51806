"""Guided-OPD (arXiv 2606.15912): the teacher acts on some turns of a training rollout, with a
probability p that follows a curriculum decaying to 0, so evaluation (p = 0) is on-policy.

From the paper (its abstract; the full text was not found): teacher- and student-generated
turns are mixed within each rollout; the teacher's intervention probability is scheduled
along a curriculum that decays to zero; the student is distilled with OPD. Our reading (not
from the paper): p is drawn independently per env and turn from a seeded uniform; the decay
shapes linear / cosine / step and their knobs (`guide_start` p0 = 0.5, `guide_end` = 0.8 of
train.steps) are ours; the loss is on the student's turns only (the teacher's are context).
The method `guided_opd` is registered in baselines.py; its knobs work in every on-policy method.
"""

from __future__ import annotations

from collections.abc import Callable

from methods.schedule import SHAPES, ramp


def curriculum_p(step: int, start: float, end_step: float, shape: str) -> float:
    """p at `step`: `start` at step 0, decaying to 0 at `end_step` (and 0 after it); linear,
    cosine ((1 + cos(pi s / end)) / 2) or step (`start` until `end_step`)."""
    if shape not in SHAPES:
        raise ValueError(f"guide_shape must be one of {SHAPES}, not {shape!r}")
    return start * (1.0 - ramp(step / end_step if end_step > 0 else 1.0, 0.0, 1.0, shape))


_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finalizer: a well-mixed 64-bit hash of x (pure integer arithmetic)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def turn_draw(seed: int, env: int, turn: int) -> float:
    """The seeded uniform in [0, 1) of one env's turn (the same for the same seed, env, turn)."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK) ^ env) ^ turn) / 2.0**64


def teacher_rule(p: float, seed: int) -> Callable[[int, int], str]:
    """(env, turn) -> "teacher" with probability p (seeded per env and turn), else "student"."""
    return lambda env, turn: "teacher" if turn_draw(seed, env, turn) < p else "student"
