"""tcod's depth gate and atod's annealing, T-DUR weights and RL term on hand-made tensors (numbers
worked out on paper), their labels in the tables, and a smoke run of each through the harness."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import methods
from analysis.collect import collect
from analysis.tables import main_table, to_markdown
from methods import MethodBatch, tcod
from tests.test_analysis import markdown_rows, write_run
from tests.test_methods import hand_batch

FRACTION = dict(tcod_unit="fraction", tcod_start=0.25, tcod_full_at=1.0)
TURNS = dict(tcod_unit="turns", tcod_start=1.0, tcod_max_depth=4, tcod_full_at=1.0)


def four_turns(progress: float) -> MethodBatch:
    """One 4-turn trajectory, one token per turn."""
    return MethodBatch(response_mask_B_T=torch.ones(1, 4), turn_ids_B_T=torch.tensor([[0, 1, 2, 3]]),
                       turn_index_U=torch.tensor([0, 1, 2, 3]), num_turns_U=torch.tensor([4, 4, 4, 4]),
                       progress=progress)


# Fraction unit, start 1/4, linear to the whole trajectory at the end: phi = 1/4 + 3/4 p, D = ceil(4 phi):
#   p = 0: D = 1;  p = 0.5: phi = 5/8, 4 phi = 2.5, D = 3;  p = 1: D = 4.
# Turns unit, 1 -> 4 turns: D = floor(1 + 3 p): p = 0: 1;  p = 0.5: floor(2.5) = 2;  p = 1: 4.
# front_to_back keeps t < D, back_to_front keeps t >= 4 - D.
@pytest.mark.parametrize(("knobs", "progress", "f2b", "b2f"), [
    (FRACTION, 0.0, [1, 0, 0, 0], [0, 0, 0, 1]),
    (FRACTION, 0.5, [1, 1, 1, 0], [0, 1, 1, 1]),
    (FRACTION, 1.0, [1, 1, 1, 1], [1, 1, 1, 1]),
    (TURNS, 0.0, [1, 0, 0, 0], [0, 0, 0, 1]),
    (TURNS, 0.5, [1, 1, 0, 0], [0, 0, 1, 1]),
    (TURNS, 1.0, [1, 1, 1, 1], [1, 1, 1, 1]),
])  # fmt: skip
def test_tcod_gate_of_a_four_turn_trajectory(knobs, progress, f2b, b2f):
    for order, expected in (("front_to_back", f2b), ("back_to_front", b2f)):
        method = methods.get("tcod", tcod_order=order, **knobs)
        assert method.turn_factor_U(four_turns(progress)).tolist() == expected, order
        assert method.weights(four_turns(progress))[0].tolist() == expected, order


def test_tcod_turns_schedule_is_the_papers_staircase():
    # kokolerk/TCOD, ALFWorld: depth 1 + step // 6 over 250 steps, capped at the 30-turn step limit.
    # Ours with 1 -> 30 turns, linear, full at 6 * 29 / 250 = 0.696 of training: the same at every step.
    ours = [tcod.depth(step / 250, unit="turns", start=1, max_depth=30, full_at=0.696, shape="linear")
            for step in range(250)]
    assert ours == [min(30, 1 + step // 6) for step in range(250)]


def test_tcod_loss_is_the_mean_token_loss_over_the_covered_turns():
    # hand_batch: turns 0, 1 (tokens l = 2, 1 | 4) are turns 0, 1 of a 2-turn trajectory; turn 2
    # (l = 1, 2, 3) is turn 2 of a 3-turn one. 1 -> 3 turns, linear to p = 1.
    batch = hand_batch(judge_probs_U_3=None, oracle_labels_U=None, turn_index_U=torch.tensor([0, 1, 2]),
                       num_turns_U=torch.tensor([2, 2, 3]))
    knobs = dict(tcod_start=1.0, tcod_max_depth=3, tcod_full_at=1.0)
    cases = [("front_to_back", 0.0, (2 + 1) / 2),  # D = 1: turn 0 only
             ("front_to_back", 0.5, (2 + 1 + 4) / 3),  # D = 2: turns 0, 1
             ("back_to_front", 0.0, (4 + 1 + 2 + 3) / 4),  # D = 1: the last turn of each
             ("back_to_front", 1.0, 13 / 6)]  # D = 3: everything, OPD's mean
    for order, progress, expected in cases:
        method = methods.get("tcod", tcod_order=order, **knobs)
        b = dataclasses.replace(batch, progress=progress)
        loss, stats = method.loss(b, method.totals([b]))
        assert float(loss) == pytest.approx(expected), (order, progress)
    assert stats["tcod_covered_frac"] == 1.0


def test_tcod_combines_with_the_sage_gate_and_needs_its_inputs():
    # sage's gate g = [1, 1, 0, 1/2, 1/2, 1/2] (Strong, Skip, Weak) times confidence, times tcod's
    # f2b gate at D = 1 (turn 0 only): w = [3/4, 1/2, 0, 0, 0, 0].
    batch = hand_batch(turn_index_U=torch.tensor([0, 1, 2]), num_turns_U=torch.tensor([2, 2, 3]), progress=0.0)
    combined = methods.get("sage", curriculum="tcod", tcod_max_depth=3)
    w_B_T = combined.weights(batch)
    assert w_B_T[batch.response_mask_B_T > 0].tolist() == [0.75, 0.5, 0, 0, 0, 0]
    assert combined.verifier_free
    with pytest.raises(ValueError, match="needs MethodBatch.progress"):
        combined.weights(dataclasses.replace(batch, progress=None))
    with pytest.raises(ValueError, match="needs turn_index_U and num_turns_U"):
        combined.weights(dataclasses.replace(batch, turn_index_U=None))
    with pytest.raises(ValueError, match="tcod_start=0.5"):
        methods.get("tcod", tcod_start=0.5)  # turns unit: at least one turn
    with pytest.raises(ValueError, match="trajectory_source must be 'student'"):
        methods.get("sft", curriculum="tcod")
    with pytest.raises(ValueError, match="tcod_order='middle' is not one of"):
        methods.get("tcod", tcod_order="middle")


# atod's RL weight lam(p) = 0.5 * ramp(p; 0.2 -> 0.8), p = step / train.steps with train.steps = 10.
@pytest.mark.parametrize(("shape", "step", "lam"), [
    ("linear", 0, 0.0), ("linear", 2, 0.0), ("linear", 5, 0.25), ("linear", 8, 0.5), ("linear", 10, 0.5),
    ("cosine", 5, 0.25),  # x = 1/2: (1 - cos(pi/2)) / 2 = 1/2
    ("cosine", 3.5, 0.25 * (1 - math.sqrt(2) / 2)),  # x = 1/4: (1 - cos(pi/4)) / 2
    ("step", 7.9, 0.0), ("step", 8, 0.5),
])  # fmt: skip
def test_atod_rl_weight_at_given_steps(shape, step, lam):
    method = methods.get("atod", atod_rl_max=0.5, atod_rl_start=0.2, atod_rl_end=0.8, atod_shape=shape)
    assert method.rl_weight(MethodBatch(torch.ones(1, 1), torch.zeros(1, 1, dtype=torch.long),
                                        progress=step / 10)) == pytest.approx(lam)


def three_tokens(progress: float = 0.5) -> MethodBatch:
    """Two trajectories: turn 0 (tokens 1, 2 of row 0) won, turn 1 (token 1 of row 1) lost.
    Student probabilities at sampling p_S = [1/2, 1/2 | 1/4], teacher p_T = [1/4, 1/2 | 1/2].
    Position 0 is a prompt and row 1's last a pad: garbage there must never count."""
    nan, ln = float("nan"), math.log
    return MethodBatch(
        response_mask_B_T=torch.tensor([[0.0, 1, 1], [0, 1, 0]]),
        turn_ids_B_T=torch.tensor([[-1, 0, 0], [-1, 1, -1]]),
        token_loss_B_T=torch.tensor([[50.0, 1, 2], [50, 3, nan]]),
        old_logp_B_T=torch.tensor([[9.0, ln(1 / 2), ln(1 / 2)], [9, ln(1 / 4), nan]]),
        teacher_logp_B_T=torch.tensor([[-9.0, ln(1 / 4), ln(1 / 2)], [9, ln(1 / 2), nan]]),
        student_logp_B_T=torch.tensor([[9.0, ln(1 / 2), ln(1 / 2)], [9, ln(1 / 4), 0]], requires_grad=True),
        trajectory_U=torch.tensor([0, 1]), reward_U=torch.tensor([1.0, 0.0]), progress=progress,
    )  # fmt: skip


def test_atod_turn_weights_loss_and_gradient_on_three_tokens():
    # T-DUR with a_d = 1, a_h = 1/2: w_u = 1 + a_d mean max(0, 1 - p_T/p_S) + a_h mean (1 - p_S).
    #   turn 0: D = (1 - 1/2 + 0) / 2 = 1/4, H = (1/2 + 1/2) / 2 = 1/2  -> w = 1 + 1/4 + 1/4 = 3/2
    #   turn 1: D = max(0, 1 - 2) = 0,      H = 3/4                   -> w = 1 + 0 + 3/8 = 11/8
    method = methods.get("atod", atod_uncertainty=0.5, atod_rl_max=0.5, atod_rl_start=0.2, atod_rl_end=0.8)
    batch = three_tokens()
    assert method.turn_factor_U(batch).tolist() == pytest.approx([1.5, 1.375])
    assert response(batch, method.weights(batch)) == pytest.approx([1.5, 1.5, 1.375])
    # OPD part, scale-preserving: sum w l / S = (3/2 + 3 + 33/8) / (3 + 11/8) = (69/8) / (35/8) = 69/35.
    # RL part: baseline = mean won over the 2 trajectories = 1/2, A = [1/2, 1/2, -1/2], ratio 1:
    #   -(1/2 + 1/2 - 1/2) / N = -1/6.  lam at p = 1/2 is 1/4: loss = 3/4 * 69/35 + 1/4 * (-1/6).
    totals = method.totals([batch])
    assert totals.reward_mean == 0.5
    loss, stats = method.loss(batch, totals)
    assert float(loss.detach()) == pytest.approx(0.75 * 69 / 35 - 0.25 / 6)
    assert stats["rl_weight_mean"] == pytest.approx(0.25) and stats["rl_loss"] == pytest.approx(-1 / 6)
    # d loss / d log p_S = -lam A / N = -1/4 * [1/2, 1/2, -1/2] / 3; 0 at prompt and pad.
    loss.backward()
    grad = batch.student_logp_B_T.grad
    torch.testing.assert_close(grad, torch.tensor([[0, -1 / 24, -1 / 24], [0, 1 / 24, 0]]))


def response(batch: MethodBatch, values_B_T: torch.Tensor) -> list[float]:
    return values_B_T[batch.response_mask_B_T > 0].tolist()


def test_atod_micro_batches_sum_to_the_whole_step():
    # Alone, row 0 would have baseline 1 and row 1 baseline 0 (and each its own N and S); the
    # step's totals give both the global N = 3, S = 35/8 and baseline 1/2: the parts sum to the whole.
    method = methods.get("atod", atod_uncertainty=0.5, atod_rl_max=0.5, atod_rl_start=0.2, atod_rl_end=0.8)
    whole = three_tokens()
    rows = [dataclasses.replace(whole, **{k: getattr(whole, k)[r:r + 1].detach() for k in (
        "response_mask_B_T", "token_loss_B_T", "old_logp_B_T", "teacher_logp_B_T", "student_logp_B_T")},
        turn_ids_B_T=torch.tensor([turn_ids]), trajectory_U=torch.tensor([r]), reward_U=torch.tensor([won]))
        for r, turn_ids, won in ((0, [-1, 0, 0], 1.0), (1, [-1, 0, -1], 0.0))]  # fmt: skip
    totals = method.totals(rows)
    assert (totals.token_count, totals.reward_mean) == (3.0, 0.5) and totals.weight_sum == pytest.approx(35 / 8)
    parts = sum(float(method.loss(b, totals)[0].detach()) for b in rows)
    assert parts == pytest.approx(0.75 * 69 / 35 - 0.25 / 6)
    assert parts == pytest.approx(float(method.loss(whole, method.totals([whole]))[0].detach()))


def test_atod_is_not_verifier_free_and_refuses_bad_knobs():
    assert not methods.get("atod").verifier_free and methods.get("atod").needs_reward
    assert methods.get("tcod").verifier_free
    # the RL term on any method reads the env's reward: the mark follows the method record
    assert not methods.get("sage", atod_rl_max=0.2).verifier_free
    with pytest.raises(ValueError, match="needs atod_rl_max > 0"):
        methods.get("atod", atod_rl_max=0.0)
    with pytest.raises(ValueError, match="atod_rl_start=0.9"):
        methods.get("atod", atod_rl_start=0.9, atod_rl_end=0.5)
    with pytest.raises(ValueError, match="needs reward_U and trajectory_U"):
        methods.get("atod").totals([dataclasses.replace(three_tokens(), reward_U=None)])
    with pytest.raises(ValueError, match="needs old_logp_B_T"):
        methods.get("atod").weights(dataclasses.replace(three_tokens(), teacher_logp_B_T=None))


def test_tables_label_tcod_and_mark_atod(tmp_path):
    root = tmp_path / "multirun"
    write_run(root / "0", "opd", 0, 0.5, 0.4)
    write_run(root / "1", "tcod", 0, 0.5, 0.5)
    atod_run = write_run(root / "2", "atod", 0, 0.6, 0.6)
    record = json.loads((atod_run / "result.json").read_text())
    (atod_run / "result.json").write_text(json.dumps(record | {"verifier_free": False}))
    table = main_table(collect([root]).runs)
    rows = markdown_rows(to_markdown(table))
    assert list(rows) == ["Method", "OPD", "TCOD", "ATOD†"]
    assert rows["ATOD†"][:3] == ["60.0", "60.0", "60.0"]  # best, but marked: never bold
    assert rows["TCOD"][1] == "**50.0**"
    assert any("ATOD: its RL reward" in note for note in table.notes)


@pytest.mark.parametrize(("name", "verifier_free", "logged"), [
    ("tcod", True, "tcod_covered_frac"), ("atod", False, "rl_weight_mean")])
def test_smoke_run_through_the_harness(tmp_path, name, verifier_free, logged):
    from harness.run import run
    from tests.hydra_utils import compose_config

    result = run(compose_config(["experiment=smoke", "model.tiny.judge_examples=0", f"method={name}"]), tmp_path)
    assert result["status"] == "complete" and result["method"] == name
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["verifier_free"] is verifier_free and set(record["eval"]) == {"valid_seen", "valid_unseen"}
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # smoke: 2 steps, progress 0 and 1/2, episodes of at most 6 turns
    if name == "tcod":  # depth 1 of 6 turns at step 0 (trajectories run to the 6-turn cap or end early)
        assert 0 < lines[0][logged] <= lines[1][logged] <= 1
    else:  # lam = 0.5 * p: 0, then 1/4
        assert [line[logged] for line in lines] == [0.0, 0.25]
    assert all(line["weight_norm_mean"] == pytest.approx(1.0) for line in lines)

