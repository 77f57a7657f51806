"""Guided-OPD: the curriculum of the teacher's chance, the seeded per-turn draw, the method's
knobs (also inside SAGE), and a smoke run through the real entry point that logs them."""

from __future__ import annotations

import json
import math

import pytest

import methods
from methods.guidance import curriculum_p, teacher_rule, turn_draw


@pytest.mark.parametrize(("shape", "expected"), [
    # p0 = 0.5, reaching 0 at step 10
    ("linear", {0: 0.5, 2: 0.4, 5: 0.25, 8: 0.1, 10: 0.0, 14: 0.0}),
    # 0.5 * (1 + cos(pi * s / 10)) / 2: s=5 -> 0.25; s=2 -> 0.25 * (1 + 0.809017) = 0.452254
    ("cosine", {0: 0.5, 2: 0.25 * (1 + math.cos(math.pi / 5)), 5: 0.25, 10: 0.0, 14: 0.0}),
    ("step", {0: 0.5, 5: 0.5, 9: 0.5, 10: 0.0, 14: 0.0}),
])
def test_curriculum_p_by_hand(shape, expected):
    assert {s: curriculum_p(s, 0.5, 10, shape) for s in expected} == pytest.approx(expected)
    assert curriculum_p(8, 0.5, 10, "cosine") == pytest.approx(0.25 * (1 + math.cos(0.8 * math.pi)))  # 0.047746
    with pytest.raises(ValueError, match="guide_shape must be one of"):
        curriculum_p(0, 0.5, 10, "exp")


def test_method_guide_p_reads_guide_end_as_a_fraction_of_the_steps():
    method = methods.get("guided_opd")
    assert (method.guide_start, method.guide_end, method.guide_shape) == (0.5, 0.8, "linear")
    # 10 steps: p reaches 0 at step 8; step 4 -> 0.5 * (1 - 4/8) = 0.25
    assert [method.guide_p(s, 10) for s in (0, 4, 8, 9)] == pytest.approx([0.5, 0.25, 0.0, 0.0])
    # smoke (2 steps): 0 at step 1.6; step 1 -> 0.5 * (1 - 1/1.6) = 0.1875
    assert [method.guide_p(s, 2) for s in (0, 1)] == pytest.approx([0.5, 0.1875])
    assert methods.get("opd").guide_p(0, 10) == 0.0  # every other method is unguided by default
    cosine = methods.get("guided_opd", guide_shape="cosine", guide_end=1.0, guide_start=0.4)
    assert cosine.guide_p(5, 10) == pytest.approx(0.2)


def test_per_env_turn_draw_is_seeded_and_the_rule_compares_it_with_p():
    from methods.guidance import _splitmix64

    # SplitMix64 from state 0 gives 0xE220A8397B1DCDAF first (the generator's reference output)
    assert _splitmix64(0) == 0xE220A8397B1DCDAF
    assert turn_draw(0, 0, 0) == _splitmix64(_splitmix64(0xE220A8397B1DCDAF) ^ 0) / 2**64
    draws = {(e, t): turn_draw(7, e, t) for e in range(4) for t in range(30)}
    assert draws == {(e, t): turn_draw(7, e, t) for e in range(4) for t in range(30)}  # repeatable
    assert len(set(draws.values())) == len(draws)  # every env and turn its own draw
    assert draws != {(e, t): turn_draw(8, e, t) for e in range(4) for t in range(30)}
    assert all(0.0 <= u < 1.0 for u in draws.values())
    rule = teacher_rule(0.3, 7)
    assert all(rule(e, t) == ("teacher" if u < 0.3 else "student") for (e, t), u in draws.items())
    share = sum(rule(e, t) == "teacher" for e, t in draws) / len(draws)
    assert 0.15 < share < 0.45  # 120 draws at p = 0.3 (the std of the share is 0.042)
    assert {teacher_rule(0.0, 7)(e, t) for e, t in draws} == {"student"}


def test_guidance_knobs_are_checked_and_switch_on_inside_sage():
    from harness.run import _method_knobs
    from tests.hydra_utils import compose_config

    cfg = compose_config(["method=sage", "method.guide_start=0.5", "method.guide_shape=step"])
    sage = methods.get(cfg.method.name, **_method_knobs(cfg))
    assert (sage.gate, sage.confidence, sage.guide_start, sage.guide_shape) == ("judge", "token", 0.5, "step")
    assert sage.guide_p(0, 10) == 0.5 and sage.guide_p(8, 10) == 0.0
    cfg = compose_config(["method=guided_opd"])
    assert methods.get(cfg.method.name, **_method_knobs(cfg)) == methods.get("guided_opd")
    with pytest.raises(ValueError, match="guide_start must lie in"):
        methods.get("guided_opd", guide_start=1.0)
    with pytest.raises(ValueError, match="guide_end in"):
        methods.get("guided_opd", guide_end=0.0)
    with pytest.raises(ValueError, match="guide_shape='exp' is not one of"):
        methods.get("guided_opd", guide_shape="exp")
    with pytest.raises(ValueError, match="needs trajectory_source 'student'"):
        methods.get("sft", guide_start=0.5)
    with pytest.raises(ValueError, match="defined by gate='none'"):
        methods.get("guided_opd", gate="judge")


@pytest.mark.slow
def test_guided_opd_smoke_run_logs_guide_p_and_teacher_turns(tmp_path):
    from harness.run import run
    from tests.hydra_utils import compose_config

    result = run(compose_config(["experiment=smoke", "model.tiny.judge_examples=0", "method=guided_opd"]), tmp_path)
    assert result["status"] == "complete" and result["method"] == "guided_opd"
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["guide_p"] for line in lines] == pytest.approx([0.5, 0.1875])
    for line in lines:
        assert 0.0 <= line["teacher_turn_frac"] < 1.0 and line["tokens"] > 0
        if line["rollout_success"] == 0:  # 2 envs x 6 turns (no win): the draws of seed = step say how many
            p, step = line["guide_p"], line["step"]
            drawn = sum(turn_draw(step, env, turn) < p for env in range(2) for turn in range(6))
            assert line["teacher_turn_frac"] == pytest.approx(drawn / 12)  # step 0: 10/12; step 1: 3/12
        assert 0.0 < line["time_generate_s"] + line["time_env_s"] <= line["time_rollout_s"]
