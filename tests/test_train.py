"""The training loop end to end on the smallest config: run records, kill-and-resume."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import methods
from harness.agent.trajectory import Datum, collate
from harness.loop.train import method_batches
from harness.run import run
from methods.weighting import normalized_weights_B_T
from tests.hydra_utils import compose_config

SMOKE = ["experiment=smoke", "model.tiny.judge_examples=0"]


def _metrics(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # wall-clock times differ between runs; everything else must not
    return [{k: v for k, v in line.items() if not k.startswith("time_")} for line in lines]


def _weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step-{step}" / "model" / "model.safetensors"))


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    overrides = SMOKE + ["method=opd", "train.steps=3", "train.checkpoint_every=1"]
    whole = tmp_path / "whole"
    result = run(compose_config(overrides), whole)
    assert result["status"] == "complete"

    parts = tmp_path / "parts"
    stopped = run(compose_config(overrides + ["train.stop_after=1"]), parts)
    assert stopped == {"status": "stopped", "step": 1}
    assert not (parts / "result.json").exists()
    # another config must not continue this checkpoint (a changed default would mix two runs)
    with pytest.raises(ValueError, match=r"holds a checkpoint \(step-1\).*train\.lr: 0\.0001 -> 0\.001"):
        run(compose_config(overrides + ["train.lr=1e-3"]), parts)
    # a crash after the metrics line of step 1 but before its checkpoint: resume rewrites it
    with open(parts / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 1, "loss": 123.0}) + "\n")
    resumed = run(compose_config(overrides), parts)
    assert resumed["status"] == "complete"

    assert _metrics(whole) == _metrics(parts)
    assert [m["step"] for m in _metrics(parts)] == [0, 1, 2]
    a, b = _weights(whole, 3), _weights(parts, 3)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed["eval"] == result["eval"]


@pytest.mark.slow
def test_run_record_has_every_logged_field(tmp_path):
    result = run(compose_config(SMOKE + ["method=no_conf", "method.judge_mode=expected", "model.tiny.judge_examples=40"]),
                 tmp_path)
    assert result["status"] == "complete" and result["method"] == "no_conf" and result["verifier_free"]
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["versions"]["alfworld"] == "0.4.2" and record["versions"]["suite_hash"]
    assert set(record["eval"]) == {"valid_seen", "valid_unseen"}
    seen = record["eval"]["valid_seen"]
    assert seen["num_games"] == 3 and 0 <= seen["success"] <= 1
    episodes = [json.loads(x) for x in (tmp_path / "eval_episodes.jsonl").read_text().splitlines()]
    assert sorted(e["split"] for e in episodes) == ["valid_seen"] * 3 + ["valid_unseen"] * 3
    assert sum(e["won"] for e in episodes if e["split"] == "valid_seen") == round(3 * seen["success"])
    assert all(len(e["turns"]) <= 6 and e["task"] for e in episodes)  # smoke's step cap is 6
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("loss", "token_loss_mean", "label_frac_skip", "label_frac_weak", "label_frac_strong",
                "weight_raw_mean", "weight_raw_min", "weight_raw_max", "weight_norm_mean", "weight_norm_min",
                "weight_norm_max", "teacher_confidence_mean", "kl_student_teacher", "rollout_success",
                "invalid_action_rate", "repeated_action_rate", "all_skipped", "time_rollout_s",
                "time_scoring_s", "time_judge_s", "time_update_s", "time_step_s"):
        assert key in line, key
    # no_conf with scale-preserving normalization: the mean normalized weight is exactly 1
    assert line["weight_norm_mean"] == pytest.approx(1.0) or line["all_skipped"] == 1.0
    fractions = line["label_frac_skip"] + line["label_frac_weak"] + line["label_frac_strong"]
    assert fractions == pytest.approx(1.0)


def test_failed_run_leaves_a_failed_record(tmp_path):
    cfg = compose_config(["env.name=alfworld", f"env.data_root={tmp_path / 'nowhere'}"])
    with pytest.raises(ValueError, match="no json_2.1.1"):
        run(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "failed" and "json_2.1.1" in record["error"]


def _window_turn(turn: int, trajectory: int = 0) -> Datum:
    """One turn of a trajectory in the window layout: 3 prompt tokens, then 2 response tokens."""
    return Datum([5, 6, 7, 8, 9], [0, 0, 0, 1, 1], [-1, -1, -1, turn, turn], [0.0, 0.0, 0.0, -1.0, -1.0], trajectory)


@pytest.mark.parametrize("together", [True, False])
def test_sequence_scope_normalizes_over_the_whole_trajectory_in_the_window_layout(together):
    """A two-turn trajectory (window layout: one datum per turn), judged Weak then Strong, under
    norm_scope=sequence with alpha=0.5: raw weights 0.5, 0.5 | 1, 1, so the trajectory's 4 tokens
    carry sum w = 3 and the rescale N_s / S_s = 4/3 gives 0.667 / 1.333 (sage_opd.md section 3),
    whether the two turns share a micro-batch or not. Rows as sequences would give 1.0 / 1.0."""
    data = [_window_turn(0), _window_turn(1)]
    micro = [collate(data, pad_id=0)] if together else [collate([d], pad_id=0) for d in data]
    weak, strong = torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    judged = ({(0, 0): weak, (0, 1): strong}, {(0, 0): True, (0, 1): True})
    method = methods.get("sage", norm_scope="sequence", confidence="none", alpha=0.5)
    batches = method_batches(micro, [None] * len(micro), judged)
    totals = method.totals(batches)
    weights = [normalized_weights_B_T(b, method.weights(b), totals, method.normalize, method.norm_scope)
               for b in batches]
    per_turn = [round(float(w_T[mask_T > 0].mean()), 3)  # one row per turn, in data order
                for b, w_B_T in zip(batches, weights, strict=True)
                for w_T, mask_T in zip(w_B_T, b.response_mask_B_T, strict=True)]
    assert per_turn == [0.667, 1.333]


@pytest.mark.parametrize("sampling", [["rollout.temperature=0.7"], ["rollout.top_p=0.9"]])
def test_sampled_estimator_off_the_students_own_distribution_is_refused(tmp_path, sampling):
    """The rollout records the student's log-probs at temperature 1 without top-p; the sampled
    estimator's importance ratio divides by them, so other sampling is refused at start-up."""
    cfg = compose_config(SMOKE + ["method=opd", "method.estimator=sampled", "train.steps=1", *sampling])
    with pytest.raises(ValueError, match=r"estimator=sampled needs rollout\.temperature=1 and rollout\.top_p=1"):
        run(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "failed" and "rollout.temperature=1" in record["error"]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any training
