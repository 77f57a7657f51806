"""Training-progress schedules shared by the curricula (tcod depth, atod's OPD->RL annealing)."""

from __future__ import annotations

import math

SHAPES: tuple[str, ...] = ("linear", "cosine", "step")


def ramp(progress: float, start: float, end: float, shape: str) -> float:
    """0 before `start`, 1 from `end` on (fractions of training), rising in between by `shape`.

    linear: (p - start) / (end - start); cosine: (1 - cos(pi x)) / 2 of that; step: 0 until
    `end`, then 1. With end <= start the ramp jumps to 1 at `start`.
    """
    if shape not in SHAPES:
        raise ValueError(f"schedule shape {shape!r} is not one of {SHAPES}")
    if end <= start:
        return 1.0 if progress >= start else 0.0
    x = min(1.0, max(0.0, (progress - start) / (end - start)))
    if shape == "linear":
        return x
    if shape == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * x))
    return 1.0 if x >= 1.0 else 0.0


def require_progress(progress: float | None, who: str) -> float:
    """The batch's training progress, or a clear error when the trainer did not set it."""
    if progress is None:
        raise ValueError(f"{who} needs MethodBatch.progress (step / train.steps); the trainer sets it")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"{who}: MethodBatch.progress must lie in [0, 1], got {progress}")
    return float(progress)
