"""harness.bench.step: the step without the speed work (unpatched engine, preload at the workers'
priority, masked scoring) trains like the step with it; the figures it prints come from both."""

from __future__ import annotations

import math

import pytest

from harness.bench.step import PHASES, compare_steps
from tests.hydra_utils import compose_config


@pytest.mark.slow
def test_both_sides_compute_the_same_losses_on_the_smoke_config():
    cfg = compose_config(["experiment=smoke", "model.tiny.judge_examples=0", "method=opd"])
    lines = []
    r = compare_steps(cfg, 2, log=lines.append)
    # one warm-up step and two timed steps per side, in turn: without, with, without, ...
    assert [line.split()[2] for line in lines if line.startswith("step ")] == ["without", "with"] * 3
    losses = r["losses"]
    assert len(losses["without"]) == len(losses["with"]) == 3
    for a, b in zip(losses["without"], losses["with"], strict=True):
        assert a > 0 and math.isclose(a, b, rel_tol=1e-4), (a, b)  # the same games, the same updates
    for side in ("without", "with"):
        means = r["means"][side]
        assert set(means) == set(PHASES) and means["step"] > 0
        assert means["rollout"] >= means["generate"] and means["rollout"] >= means["env"]
