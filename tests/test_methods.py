"""Methods on hand-made tensors: weights and losses worked out on paper, global normalization."""

import dataclasses
import math

import pytest
import torch

import methods
from methods import MethodBatch

# Two trajectories (rows), three turns, T = 5 positions; N = 6 response tokens.
#   row 0: [prompt, turn0, turn0, feedback, turn1]    row 1: [prompt, turn2, turn2, turn2, pad]
# Response tokens in order (t0, t0, t1, t2, t2, t2):
#   token loss l        = [2,    1,    4,    1,    2,    3   ]
#   teacher top-1 c     = [3/4,  1/2,  1/4,  1,    1/2,  1/4 ]
# Judge (Skip, Weak, Strong): turn0 [1/8, 1/8, 3/4] -> Strong, turn1 [1/2, 1/4, 1/4] -> Skip,
#   turn2 [1/4, 1/2, 1/4] -> Weak.  alpha = 1/2, so argmax gates g = [1, 1, 0, 1/2, 1/2, 1/2].
# Oracle labels: turn0 Skip, turn1 Strong, turn2 Weak.
# Positions outside responses hold garbage (100, and NaN at the pad) that must never count.
NAN = float("nan")


def hand_batch(**changes) -> MethodBatch:
    batch = MethodBatch(
        response_mask_B_T=torch.tensor([[0.0, 1, 1, 0, 1], [0, 1, 1, 1, 0]]),
        turn_ids_B_T=torch.tensor([[-1, 0, 0, -1, 1], [-1, 2, 2, 2, -1]]),
        token_loss_B_T=torch.tensor([[100.0, 2, 1, 100, 4], [100, 1, 2, 3, NAN]]),
        teacher_top1_B_T=torch.tensor([[0.9, 0.75, 0.5, 0.9, 0.25], [0.9, 1.0, 0.5, 0.25, 0.9]]),
        judge_probs_U_3=torch.tensor([[1 / 8, 1 / 8, 3 / 4], [1 / 2, 1 / 4, 1 / 4], [1 / 4, 1 / 2, 1 / 4]]),
        oracle_labels_U=torch.tensor([0, 2, 1]),
        sequence_ids_B=torch.tensor([0, 1]),
    )  # fmt: skip
    return dataclasses.replace(batch, **changes)


def run(method: methods.Method, batch: MethodBatch):
    return method.loss(batch, method.totals([batch]))


def response_values(batch: MethodBatch, values_B_T: torch.Tensor) -> list[float]:
    return values_B_T[batch.response_mask_B_T > 0].tolist()


# Expected raw weights w (response tokens in order) and loss, all worked out by hand.
# scale-preserving: loss = (1/N) sum (w N / S) l = sum(w l) / S;  mean: loss = sum(w l) / N.
HAND = {
    # w = g*c = [3/4, 1/2, 0, 1/2, 1/4, 1/8]; S = 17/8; sum w l = 3/2+1/2+0+1/2+1/2+3/8 = 27/8.
    "sage": ([0.75, 0.5, 0, 0.5, 0.25, 0.125], 27 / 17),
    # w = c; S = 13/4; sum w l = 3/2+1/2+1+1+1+3/4 = 23/4.
    "no_gate": ([0.75, 0.5, 0.25, 1, 0.5, 0.25], 23 / 13),
    # w = g; S = 7/2; sum w l = 2+1+0+1/2+1+3/2 = 6.
    "no_conf": ([1, 1, 0, 0.5, 0.5, 0.5], 12 / 7),
    # sage's w, no rescale: (27/8) / 6 = 9/16.
    "no_norm": ([0.75, 0.5, 0, 0.5, 0.25, 0.125], 9 / 16),
    # w = 1: mean token loss (2+1+4+1+2+3)/6 = 13/6 (sft: the mean NLL; gkd: the mean JSD).
    "opd": ([1] * 6, 13 / 6),
    "gkd": ([1] * 6, 13 / 6),
    "sft": ([1] * 6, 13 / 6),
    # g = [0, 0, 1, 1/2, 1/2, 1/2]; w = [0, 0, 1/4, 1/2, 1/4, 1/8]; S = 9/8;
    # sum w l = 0+0+1+1/2+1/2+3/8 = 19/8.
    "oracle_gate": ([0, 0, 0.25, 0.5, 0.25, 0.125], 19 / 9),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_example_weights_and_loss(name):
    method = methods.get(name)
    batch = hand_batch(token_loss_B_T=hand_batch().token_loss_B_T.clone().requires_grad_(True))
    loss, stats = run(method, batch)
    weights, expected_loss = HAND[name]
    assert response_values(batch, method.weights(batch)) == pytest.approx(weights, abs=1e-7)
    assert loss.item() == pytest.approx(expected_loss, abs=1e-6)
    assert stats["weight_mean"] == pytest.approx(1.0 if name != "no_norm" else 2.125 / 6)
    # d loss / d l = w~ / N; the garbage positions (even the NaN) get exactly zero gradient.
    loss.backward()
    scale = sum(weights) if method.normalize == "scale_preserving" else 6
    grad = batch.token_loss_B_T.grad
    assert response_values(batch, grad) == pytest.approx([w / scale for w in weights], abs=1e-7)
    assert torch.isfinite(grad).all() and grad[batch.response_mask_B_T == 0].abs().sum() == 0


def test_sage_normalized_weights_and_stats():
    method, batch = methods.get("sage"), hand_batch()
    w_B_T = method.weights(batch)
    w_norm = response_values(batch, w_B_T * 6 / 2.125)  # w~ = w N / S = w * 48/17
    assert w_norm == pytest.approx([36 / 17, 24 / 17, 0, 24 / 17, 12 / 17, 6 / 17], abs=1e-6)
    assert sum(w_norm) / 6 == pytest.approx(1.0, abs=1e-7)
    _, stats = run(method, batch)
    assert stats["weight_mean"] == pytest.approx(1.0, abs=1e-7)
    assert (stats["weight_min"], stats["weight_max"]) == pytest.approx((0.0, 36 / 17))
    assert stats["weight_raw_mean"] == pytest.approx(2.125 / 6)
    assert (stats["weight_raw_min"], stats["weight_raw_max"]) == (0.0, 0.75)
    assert stats["token_loss_mean"] == pytest.approx(13 / 6)
    assert stats["teacher_confidence_mean"] == pytest.approx(13 / 24)  # (3.25) / 6
    for label in ("skip", "weak", "strong"):
        assert stats[f"label_{label}_frac"] == pytest.approx(1 / 3)
    assert stats["all_skipped"] == 0.0 and stats["tokens"] == 6 and stats["turns"] == 3


def test_expected_judge_mode():
    # Expected gates: turn0 1/8*1/2 + 3/4 = 13/16, turn1 1/8 + 1/4 = 3/8, turn2 1/4 + 1/4 = 1/2.
    # w = [39/64, 26/64, 6/64, 32/64, 16/64, 8/64]; S = 127/64; sum w l = 216/64.
    method = methods.get("sage", judge_mode="expected")
    batch = hand_batch()
    weights = [39 / 64, 26 / 64, 6 / 64, 0.5, 0.25, 0.125]
    assert response_values(batch, method.weights(batch)) == pytest.approx(weights, abs=1e-7)
    assert run(method, batch)[0].item() == pytest.approx(216 / 127, abs=1e-6)


def test_invalid_turn_fails_closed_to_strong():
    # Turn1 (judged Skip) is unparseable -> Strong, gate 1: w = [3/4, 1/2, 1/4, 1/2, 1/4, 1/8],
    # S = 19/8, sum w l = 27/8 + 1 = 35/8.
    batch = hand_batch(judge_valid_U=torch.tensor([True, False, True]))
    loss, stats = run(methods.get("sage"), batch)
    assert loss.item() == pytest.approx(35 / 19, abs=1e-6)
    assert stats["label_strong_frac"] == pytest.approx(2 / 3)
    assert stats["judge_invalid_frac"] == pytest.approx(1 / 3)
    # In expected mode too: the invalid turn's 3/8 becomes 1.
    expected = methods.get("sage", judge_mode="expected")
    assert response_values(batch, expected.weights(batch))[2] == pytest.approx(0.25)


def test_turn_confidence():
    # Turn means of c: turn0 (3/4+1/2)/2 = 5/8, turn1 1/4, turn2 (1+1/2+1/4)/3 = 7/12.
    # w = g*c = [5/8, 5/8, 0, 7/24, 7/24, 7/24]; S = 17/8; sum w l = 15/8 + 7/24*6 = 29/8.
    method, batch = methods.get("sage", confidence="turn"), hand_batch()
    weights = [5 / 8, 5 / 8, 0, 7 / 24, 7 / 24, 7 / 24]
    assert response_values(batch, method.weights(batch)) == pytest.approx(weights, abs=1e-6)
    assert run(method, batch)[0].item() == pytest.approx(29 / 17, abs=1e-6)


def test_sequence_scope_gives_each_sequence_mean_weight_one():
    # Row 0: w = [3/4, 1/2, 0], N0 = 3, S0 = 5/4 -> w~ = w * 12/5 = [9/5, 6/5, 0].
    # Row 1: w = [1/2, 1/4, 1/8], N1 = 3, S1 = 7/8 -> w~ = w * 24/7 = [12/7, 6/7, 3/7].
    # loss = (1/6)(9/5*2 + 6/5*1 + 12/7*1 + 6/7*2 + 3/7*3) = (1/6)(24/5 + 33/7) = 111/70.
    loss, stats = run(methods.get("sage", norm_scope="sequence"), hand_batch())
    assert loss.item() == pytest.approx(111 / 70, abs=1e-6)
    assert stats["weight_mean"] == pytest.approx(1.0)
    assert stats["weight_max"] == pytest.approx(9 / 5)
    with pytest.raises(ValueError, match="sequence_ids_B"):
        run(methods.get("sage", norm_scope="sequence"), hand_batch(sequence_ids_B=None))


def test_all_skipped_gives_exact_zero_and_zero_gradient():
    skip_U_3 = torch.tensor([[1.0, 0, 0]] * 3)
    token_loss = hand_batch().token_loss_B_T.clone().requires_grad_(True)
    batch = hand_batch(judge_probs_U_3=skip_U_3, token_loss_B_T=token_loss)
    for name in ("sage", "no_conf", "no_norm"):
        loss, stats = run(methods.get(name), batch)
        assert loss.item() == 0.0 and stats["all_skipped"] == 1.0
        assert stats["weight_mean"] == 0.0 and stats["label_skip_frac"] == 1.0
        (grad,) = torch.autograd.grad(loss, token_loss)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_sft_token_loss_is_nll_and_needs_no_teacher():
    method = methods.get("sft", sft_source="expert")
    assert method.trajectory_source == "expert" and not method.needs_teacher_logits
    logits_N_V = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    nll_N = method.token_loss(logits_N_V, None, torch.tensor([0, 1]))
    assert nll_N.tolist() == pytest.approx([math.log(2), math.log(4)])


def test_method_properties_and_ablations_are_sage_with_one_switch():
    sage = methods.get("sage")
    assert dataclasses.replace(sage, name="no_gate", gate="none") == methods.get("no_gate")
    assert dataclasses.replace(sage, name="no_conf", confidence="none") == methods.get("no_conf")
    assert dataclasses.replace(sage, name="no_norm", normalize="mean") == methods.get("no_norm")
    assert dataclasses.replace(sage, name="oracle_gate", gate="oracle") == methods.get(
        "oracle_gate"
    )
    flags = {n: (m.needs_judge, m.verifier_free, m.trajectory_source)
             for n in methods.available() for m in [methods.get(n)]}  # fmt: skip
    assert flags == {
        "gkd": (False, True, "student"), "guided_opd": (False, True, "student"), "no_conf": (True, True, "student"),
        "no_gate": (False, True, "student"), "no_norm": (True, True, "student"),
        "opd": (False, True, "student"), "oracle_gate": (False, False, "student"),
        "sage": (True, True, "student"), "sft": (False, True, "teacher"),
        "tcod": (False, True, "student"), "atod": (False, False, "student"),
    }  # fmt: skip
    assert methods.get("gkd", beta=0.1).estimator == "jsd"


def test_registry_errors_say_what_exists():
    with pytest.raises(ValueError, match=r"unknown method 'sagee'.*no_gate.*Did you mean 'sage'"):
        methods.get("sagee")
    with pytest.raises(ValueError, match="unknown knob.*'alpah'"):
        methods.get("sage", alpah=0.3)
    with pytest.raises(ValueError, match="defined by gate='none'"):
        methods.get("no_gate", gate="judge")
    with pytest.raises(ValueError, match="judge_mode='soft' is not one of"):
        methods.get("sage", judge_mode="soft")
    with pytest.raises(ValueError, match="nll is for teacher/expert"):
        methods.get("opd", estimator="nll")
    with pytest.raises(ValueError, match="already registered"):
        methods.register("sage")(methods.get)


@pytest.mark.parametrize("name", ["sage", "no_gate", "no_conf", "no_norm", "opd", "gkd", "sft", "oracle_gate"])  # fmt: skip
def test_every_method_builds_and_runs(name):
    assert name in methods.available()
    loss, stats = run(methods.get(name), hand_batch())
    assert math.isfinite(loss.item()) and stats["tokens"] == 6


# Gradient accumulation: a real parameter W makes student logits x @ W; the loss of one batch of
# 4 rows must equal (in gradient) the sum over two micro-batches of 2 rows with global totals.
def _rows(seed: int, num_rows: int = 4, length: int = 6, vocab: int = 7):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for r in range(num_rows):
        mask = torch.zeros(length)
        mask[1 : 2 + r] = 1.0  # 1..4 response tokens: unequal micro-batch token counts
        turns = torch.where(mask > 0, (torch.arange(length) > 2).long(), torch.tensor(-1))
        rows.append(dict(
            mask=mask, turns=turns, x=torch.randn(length, 4, generator=gen),
            teacher=2 * torch.randn(length, vocab, generator=gen),
            ids=torch.randint(vocab, (length,), generator=gen),
            judge=torch.softmax(2 * torch.randn(2, 3, generator=gen), -1),
            oracle=torch.randint(3, (2,), generator=gen),
        ))  # fmt: skip
    return rows


def _batch(method, rows, weight, first_seq: int) -> MethodBatch:
    turn_ids, offset = [], 0
    for row in rows:  # renumber turns 0..U-1 within the micro-batch
        turn_ids.append(torch.where(row["turns"] >= 0, row["turns"] + offset, row["turns"]))
        offset += len(row["judge"])  # 2 turns per row (row 0's second turn has no tokens)
    student_B_T_V = torch.stack([row["x"] for row in rows]) @ weight
    teacher_B_T_V = torch.stack([row["teacher"] for row in rows])
    ids_B_T = torch.stack([row["ids"] for row in rows])
    old_B_T = torch.log_softmax(student_B_T_V.detach(), -1).gather(-1, ids_B_T[..., None])[..., 0]
    vocab = student_B_T_V.shape[-1]
    loss_N = method.token_loss(student_B_T_V.reshape(-1, vocab), teacher_B_T_V.reshape(-1, vocab),
                               ids_B_T.reshape(-1), old_B_T.reshape(-1))  # fmt: skip
    return MethodBatch(
        response_mask_B_T=torch.stack([row["mask"] for row in rows]),
        turn_ids_B_T=torch.stack(turn_ids),
        token_loss_B_T=loss_N.reshape(len(rows), -1),
        teacher_top1_B_T=torch.softmax(teacher_B_T_V, -1).amax(-1),
        judge_probs_U_3=torch.cat([row["judge"] for row in rows]),
        oracle_labels_U=torch.cat([row["oracle"] for row in rows]),
        sequence_ids_B=torch.arange(first_seq, first_seq + len(rows)),
    )


ACCUMULATION_CASES = [
    ("sage", {}), ("sage", {"judge_mode": "expected", "confidence": "turn"}),
    ("sage", {"norm_scope": "sequence"}), ("sage", {"estimator": "sampled", "clip_eps": 0.2}),
    ("no_gate", {}), ("no_conf", {}), ("no_norm", {}), ("opd", {}), ("gkd", {}), ("sft", {}),
    ("oracle_gate", {}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "knobs"), ACCUMULATION_CASES)
def test_gradient_accumulation_invariance(name, knobs):
    method, rows = methods.get(name, **knobs), _rows(seed=1)
    weight = torch.randn(4, 7, generator=torch.Generator().manual_seed(2), requires_grad=True)

    full = _batch(method, rows, weight, first_seq=0)
    full_loss, full_stats = method.loss(full, method.totals([full]))
    (grad_full,) = torch.autograd.grad(full_loss, weight)

    # The trainer's order: totals from teacher signals only (no token losses yet), then one
    # forward + backward per micro-batch, gradients accumulating in weight.grad.
    parts = [(rows[:2], 0), (rows[2:], 2)]
    signals = [
        dataclasses.replace(_batch(method, r, weight, s), token_loss_B_T=None) for r, s in parts
    ]
    totals = method.totals(signals)
    micro_stats = []
    for part_rows, first_seq in parts:
        loss, stats = method.loss(_batch(method, part_rows, weight, first_seq), totals)
        loss.backward()
        micro_stats.append(stats)
    torch.testing.assert_close(weight.grad, grad_full, atol=1e-6, rtol=0)
    merged = methods.merge_stats(micro_stats)
    for key, value in full_stats.items():
        assert merged[key] == pytest.approx(value, abs=1e-6), key

    # The check can fail: normalizing each micro-batch by its own totals changes the gradient.
    naive = 0.0
    for part_rows, first_seq in parts:
        batch = _batch(method, part_rows, weight, first_seq)
        naive = naive + method.loss(batch, method.totals([batch]))[0]
    (grad_naive,) = torch.autograd.grad(naive, weight)
    assert (grad_naive - grad_full).abs().max() > 1e-3


def _rank_share(rank: int, init_file: str, out_dir: str) -> None:
    # One rank of a 2-process gloo group: row r of the hand example lives on rank r.
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    batch = hand_batch(token_loss_B_T=torch.tensor([[100.0, 2, 1, 100, 4], [100, 1, 2, 3, 0]]))
    turns = [[0, 1], [2]][rank]  # turns renumbered 0..U-1 on each rank
    ids_1_T = batch.turn_ids_B_T[rank : rank + 1]
    local = dataclasses.replace(
        batch,
        response_mask_B_T=batch.response_mask_B_T[rank : rank + 1],
        turn_ids_B_T=torch.where(ids_1_T >= 0, ids_1_T - turns[0], ids_1_T),
        token_loss_B_T=batch.token_loss_B_T[rank : rank + 1],
        teacher_top1_B_T=batch.teacher_top1_B_T[rank : rank + 1],
        judge_probs_U_3=batch.judge_probs_U_3[turns],
        oracle_labels_U=batch.oracle_labels_U[turns],
        sequence_ids_B=batch.sequence_ids_B[rank : rank + 1],
    )
    method = methods.get("sage")
    totals = method.totals([local])
    loss, _ = method.loss(local, totals)
    torch.save((totals.token_count, totals.weight_sum, loss.item()), f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_totals_are_all_reduced_across_ranks(tmp_path):
    # Rank 0 holds turns 0-1 (3 tokens), rank 1 turn 2 (3 tokens); with global totals
    # (N = 6, S = 17/8) the ranks' shares sum to sage's one-process loss 27/17.
    torch.multiprocessing.spawn(
        _rank_share, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    shares = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for token_count, weight_sum, _ in shares:
        assert (token_count, weight_sum) == (6.0, 2.125)
    # Rank 0: (3/4*2 + 1/2*1 + 0*4) / (17/8) = 16/17; rank 1: (1/2 + 1/2 + 3/8) / (17/8) = 11/17.
    assert [s[2] for s in shares] == pytest.approx([16 / 17, 11 / 17], abs=1e-6)


def test_methods_never_import_env_rollout_or_harness():
    import ast
    import pathlib

    allowed = {"torch", "methods", "math", "difflib", "dataclasses", "collections", "__future__"}
    for path in pathlib.Path(methods.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                for name in names:
                    assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
