"""Scoring: one pass equals per-turn recomputation, chunked equals naive, masks, vocab truncation."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from harness.agent.trajectory import Datum, collate
from harness.default.tiny import TinyModelSpec, build_tiny_model, build_tokenizer
from harness.loop.scoring import (
    Positions,
    context_hidden,
    model_parts,
    row_groups,
    sequence_logprobs,
    student_pass,
    teacher_pass,
)
from methods.estimators import token_loss
from methods.method import Method

CORPUS = ["You arrive at countertop 1. On the countertop 1, you see a apple 1, and a mug 2."]
STUDENT = TinyModelSpec(layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64)
TEACHER = TinyModelSpec(
    layers=2, hidden=48, heads=4, kv_heads=2, intermediate=96, tie_embeddings=False
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def student(tokenizer):
    return build_tiny_model(STUDENT, tokenizer, seed=1)


@pytest.fixture(scope="module")
def teacher(tokenizer):
    return build_tiny_model(TEACHER, tokenizer, seed=2).eval()


def make_datum(segments: list[tuple[str, int]], vocab: int, seed: int, index: int = 0) -> Datum:
    """A datum from ('prompt'|'response', length) segments with random ids and sampling log-probs."""
    rng = random.Random(seed)
    ids, mask, turns, old = [], [], [], []
    turn = -1
    for kind, length in segments:
        turn += kind == "response"
        for _ in range(length):
            ids.append(rng.randrange(5, vocab))  # 0-4 are the special tokens
            mask.append(int(kind == "response"))
            turns.append(turn if kind == "response" else -1)
            old.append(-rng.uniform(0.1, 3.0) if kind == "response" else 0.0)
    return Datum(ids, mask, turns, old, trajectory_index=index)


THREE_TURNS = [
    ("prompt", 9),
    ("response", 4),
    ("prompt", 6),
    ("response", 3),
    ("prompt", 5),
    ("response", 5),
]
TWO_TURNS = [("prompt", 4), ("response", 2), ("prompt", 3), ("response", 3), ("prompt", 2)]


def batch_of(tokenizer, *data: Datum):
    return collate(list(data), pad_id=tokenizer.pad_token_id)


def test_one_pass_equals_per_turn_recomputation(tokenizer, teacher, student):
    vocab = len(tokenizer)
    full = make_datum(THREE_TURNS, vocab, seed=0)
    batch = batch_of(tokenizer, full, make_datum(TWO_TURNS, vocab, seed=1, index=1))  # padded row 1
    out = teacher_pass(teacher, batch, keep_vocab=vocab, chunk_size=5)
    student_logp_B_T = sequence_logprobs(student, batch)
    ends = [
        i + 1
        for i in range(len(full.token_ids))
        if full.response_mask[i] and (i + 1 == len(full.token_ids) or not full.response_mask[i + 1])
    ]
    assert len(ends) == 3
    for turn, end in enumerate(ends):
        # This turn's prefix alone, scored only on this turn's tokens, as a per-turn scorer would.
        mask = [
            int(m and t == turn)
            for m, t in zip(full.response_mask[:end], full.turn_index[:end], strict=True)
        ]
        alone = Datum(full.token_ids[:end], mask, full.turn_index[:end], full.sample_logprobs[:end])
        single = batch_of(tokenizer, alone)
        ref = teacher_pass(teacher, single, keep_vocab=vocab)
        positions = torch.tensor(mask, dtype=torch.bool)
        assert positions.sum() == [4, 3, 5][turn]
        torch.testing.assert_close(
            out.logp_B_T[0, :end][positions], ref.logp_B_T[0][positions], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(
            out.top1_B_T[0, :end][positions], ref.top1_B_T[0][positions], atol=1e-5, rtol=0
        )
        with torch.no_grad():
            ref_student = sequence_logprobs(student, single)
        torch.testing.assert_close(
            student_logp_B_T[0, :end][positions], ref_student[0][positions], atol=1e-5, rtol=0
        )


def naive_scores(student, teacher, batch, estimator, **knobs):
    """Whole-batch logits from the models' own forward, no chunks: the reference."""
    tokens, attention = batch["tokens_B_T"], batch["attention_mask_B_T"]
    student_logits = student(input_ids=tokens, attention_mask=attention).logits[:, :-1]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=tokens, attention_mask=attention).logits[:, :-1]
    mask = batch["response_mask_B_T"][:, 1:] > 0
    sampled = tokens[:, 1:][mask]
    s, t = student_logits[mask], teacher_logits[mask][:, : student_logits.shape[-1]]
    loss_N = token_loss(estimator, s, t, sampled, batch["old_logp_B_T"][:, 1:][mask], **knobs)
    logp_s, logp_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
    kl_N = (logp_s.exp() * (logp_s - logp_t)).sum(-1)

    def place(values_N):
        out = torch.zeros(tokens.shape)
        out[:, 1:][mask] = values_N
        return out

    return (
        place(loss_N),
        place(logp_s.gather(1, sampled[:, None]).squeeze(1).detach()),
        place(kl_N.detach()),
    )


@pytest.mark.parametrize(
    "estimator,knobs", [("full_kl", {}), ("sampled", {"clip_eps": 0.2}), ("jsd", {"beta": 0.3})]
)
def test_chunked_equals_naive_values_and_gradients(tokenizer, teacher, student, estimator, knobs):
    vocab = len(tokenizer)
    batch = batch_of(
        tokenizer, make_datum(THREE_TURNS, vocab, 2), make_datum(TWO_TURNS, vocab, 3, index=1)
    )
    params = [p for p in student.parameters() if p.requires_grad]
    student.zero_grad()
    loss_ref, logp_ref, kl_ref = naive_scores(student, teacher, batch, estimator, **knobs)
    loss_ref.sum().backward()
    grads_ref = [p.grad.clone() for p in params]
    _, teacher_head = model_parts(teacher)
    for chunk_size in (1, 3, 7, 1000):
        student.zero_grad()
        teacher_out = teacher_pass(teacher, batch, keep_vocab=vocab, chunk_size=chunk_size)
        out = student_pass(
            student,
            teacher_head,
            batch,
            teacher_out,
            method=Method("test", estimator=estimator, **knobs),
            chunk_size=chunk_size,
        )
        torch.testing.assert_close(out.token_loss_B_T, loss_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.logp_B_T, logp_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.kl_B_T, kl_ref, atol=1e-5, rtol=0)
        out.token_loss_B_T.sum().backward()
        for grad, grad_ref in zip([p.grad for p in params], grads_ref, strict=True):
            torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-4)
    assert kl_ref.abs().sum() > 0.1  # random models disagree, so the comparison means something


def test_row_groups_by_hand():
    # lengths 5, 0, 3, 9, 4: row 1 has nothing to score; ascending order is rows 2, 4, 0, 3
    assert row_groups([5, 0, 3, 9, 4], 10) == [[2, 4], [0], [3]]  # 2 x 4 = 8 <= 10; 2 x 5 > 10; 9 alone
    assert row_groups([5, 0, 3, 9, 4], 15) == [[2, 4, 0], [3]]  # 3 x 5 = 15 fits, 2 x 9 = 18 does not
    assert row_groups([5, 0, 3, 9, 4], 1) == [[2], [4], [0], [3]]  # each row alone, even over the budget
    assert row_groups([5, 0, 3, 9, 4], None) == [[2, 4, 0, 3]]
    assert row_groups([0, 0], 8) == []
    with pytest.raises(ValueError, match="scoring_tokens"):
        row_groups([3], 0)


@pytest.mark.parametrize("group_tokens", [1, 40, None])
def test_grouped_unmasked_forwards_equal_the_padded_masked_batch(tokenizer, teacher, student, group_tokens):
    """Rows of lengths 29, 14 and 9, run one by one, in groups or all at once without a padding
    mask, give the models' own masked forward: values and gradients."""
    vocab = len(tokenizer)
    short = [("prompt", 3), ("response", 2), ("prompt", 2), ("response", 2)]
    batch = batch_of(tokenizer, make_datum(THREE_TURNS, vocab, 11), make_datum(TWO_TURNS, vocab, 12, index=1),
                     make_datum(short, vocab, 13, index=2))
    assert batch["attention_mask_B_T"].sum(1).tolist() == [32, 14, 9]
    params = [p for p in student.parameters() if p.requires_grad]
    student.zero_grad()
    loss_ref, logp_ref, kl_ref = naive_scores(student, teacher, batch, "full_kl")
    loss_ref.sum().backward()
    grads_ref = [p.grad.clone() for p in params]
    student.zero_grad()
    teacher_out = teacher_pass(teacher, batch, keep_vocab=vocab, group_tokens=group_tokens)
    with torch.no_grad():
        teacher_logp_ref = F.log_softmax(teacher(**{"input_ids": batch["tokens_B_T"],
                                                    "attention_mask": batch["attention_mask_B_T"]}).logits, -1)
    mask = batch["response_mask_B_T"][:, 1:] > 0
    sampled = batch["tokens_B_T"][:, 1:][mask]
    torch.testing.assert_close(teacher_out.logp_N, teacher_logp_ref[:, :-1][mask].gather(1, sampled[:, None])[:, 0],
                               atol=1e-5, rtol=0)
    out = student_pass(student, model_parts(teacher)[1], batch, teacher_out, method=Method("test"),
                       group_tokens=group_tokens)
    torch.testing.assert_close(out.token_loss_B_T, loss_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.kl_B_T, kl_ref, atol=1e-5, rtol=0)
    out.token_loss_B_T.sum().backward()
    for grad, grad_ref in zip([p.grad for p in params], grads_ref, strict=True):
        torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-4)
    every = sequence_logprobs(student, batch, which="all", group_tokens=group_tokens)
    torch.testing.assert_close(every, sequence_logprobs(student, batch, which="all"), atol=1e-5, rtol=0)


def test_a_mask_that_is_not_right_padding_is_kept(tokenizer, teacher):
    """Left padding: real tokens come after pads, so the mask matters and context_hidden keeps it."""
    ids = torch.tensor([[9, 10, 11, 12, 13, 14], [0, 0, 0, 20, 21, 22]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    batch = {"tokens_B_T": ids, "attention_mask_B_T": attention}
    positions = Positions(torch.tensor([0, 1, 1]), torch.tensor([6, 5, 6]), (2, 6))
    body, _ = model_parts(teacher)
    with torch.no_grad():
        got = context_hidden(body, batch, positions, group_tokens=1)
        masked = body(input_ids=ids, attention_mask=attention).last_hidden_state
        unmasked = body(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, masked[[0, 1, 1], [5, 4, 5]], atol=1e-6, rtol=0)
    assert (unmasked[1, 4:] - masked[1, 4:]).abs().max() > 1e-3  # without the mask row 1 would differ


def test_masks_cover_exactly_the_sampled_tokens(tokenizer, teacher, student):
    vocab = len(tokenizer)
    batch = batch_of(
        tokenizer, make_datum(THREE_TURNS, vocab, 4), make_datum(TWO_TURNS, vocab, 5, index=1)
    )
    teacher_out = teacher_pass(teacher, batch, keep_vocab=vocab)
    out = student_pass(student, model_parts(teacher)[1], batch, teacher_out)
    response = batch["response_mask_B_T"] > 0
    assert response.sum() == 12 + 5
    for values in (
        out.token_loss_B_T.detach(),
        out.logp_B_T,
        out.kl_B_T,
        teacher_out.logp_B_T,
        teacher_out.top1_B_T,
    ):
        assert torch.equal(values != 0, response)
    assert (out.logp_B_T[response] < 0).all() and (teacher_out.top1_B_T[response] <= 1).all()
    # Padding ids never matter: replace them with arbitrary tokens and nothing changes.
    noisy = dict(batch)
    noisy["tokens_B_T"] = batch["tokens_B_T"].clone()
    noisy["tokens_B_T"][batch["attention_mask_B_T"] == 0] = 7
    again = student_pass(
        student, model_parts(teacher)[1], noisy, teacher_pass(teacher, noisy, keep_vocab=vocab)
    )
    torch.testing.assert_close(again.kl_B_T, out.kl_B_T, atol=1e-6, rtol=0)


def test_response_token_at_position_zero_is_refused(tokenizer, teacher):
    datum = make_datum([("response", 2), ("prompt", 2)], len(tokenizer), 6)
    with pytest.raises(ValueError, match="position 0"):
        teacher_pass(teacher, batch_of(tokenizer, datum), keep_vocab=len(tokenizer))


def test_hand_computed_bigram_model(tokenizer):
    """Teacher with zero weights: uniform over 10 tokens. Student: logits ln 3 on token 4, else 0.

    p_S(4) = 3/12 = 1/4, p_S(other) = 1/12;  KL(S||U) = 1/4 ln(10/4) + 9/12 ln(10/12) = 0.092332.
    """
    spec = TinyModelSpec(
        layers=1, hidden=8, heads=2, kv_heads=2, intermediate=8, tie_embeddings=False
    )
    teacher = build_tiny_model(spec, tokenizer, vocab_size=10)
    student = build_tiny_model(spec, tokenizer, vocab_size=10)
    with torch.no_grad():
        for model in (teacher, student):
            for p in model.parameters():
                p.zero_()
        # Student: every embedding is all ones (RMS 1), the zero layers add nothing, the final
        # norm keeps it, and the head puts ln 3 / 8 per unit on token 4.
        student.get_input_embeddings().weight.fill_(1.0)
        student.model.norm.weight.fill_(1.0)
        student.get_output_embeddings().weight[4].fill_(math.log(3) / 8)
    datum = Datum([1, 4, 6, 9], [0, 1, 1, 0], [-1, 0, 0, -1], [0.0, -1.0, -2.0, 0.0])
    batch = collate([datum], pad_id=0)
    teacher_out = teacher_pass(teacher, batch, keep_vocab=10)
    out = student_pass(student, model_parts(teacher)[1], batch, teacher_out)
    expected_kl = 0.25 * math.log(10 / 4) + 0.75 * math.log(10 / 12)
    assert expected_kl == pytest.approx(0.0923315, abs=1e-6)
    torch.testing.assert_close(
        out.kl_B_T[0], torch.tensor([0, expected_kl, expected_kl, 0]), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(
        out.logp_B_T[0], torch.tensor([0, math.log(1 / 4), math.log(1 / 12), 0]), atol=2e-6, rtol=0
    )
    torch.testing.assert_close(
        teacher_out.logp_B_T[0],
        torch.tensor([0, -math.log(10), -math.log(10), 0]),
        atol=1e-6,
        rtol=0,
    )
    torch.testing.assert_close(
        teacher_out.top1_B_T[0], torch.tensor([0, 0.1, 0.1, 0]), atol=1e-6, rtol=0
    )


def test_padded_teacher_vocab_is_truncated(tokenizer, student):
    vocab = len(tokenizer)
    plain = build_tiny_model(TEACHER, tokenizer, seed=3)
    padded = build_tiny_model(TEACHER, tokenizer, seed=3, vocab_size=vocab + 64)
    with torch.no_grad():
        padded.load_state_dict(
            {
                k: v
                for k, v in plain.state_dict().items()
                if "embed" not in k and "lm_head" not in k
            },
            strict=False,
        )
        padded.get_input_embeddings().weight[:vocab] = plain.get_input_embeddings().weight
        padded.get_output_embeddings().weight[:vocab] = plain.get_output_embeddings().weight
        padded.get_output_embeddings().weight[vocab:] = (
            0.5  # padding rows that would matter if kept
        )
    batch = batch_of(tokenizer, make_datum(THREE_TURNS, vocab, 7))
    results = []
    for teacher in (plain, padded):
        teacher_out = teacher_pass(teacher, batch, keep_vocab=vocab, chunk_size=4)
        with torch.no_grad():
            results.append(
                (teacher_out, student_pass(student, model_parts(teacher)[1], batch, teacher_out))
            )
    (plain_t, plain_s), (padded_t, padded_s) = results
    torch.testing.assert_close(padded_s.kl_B_T, plain_s.kl_B_T, atol=1e-6, rtol=0)
    torch.testing.assert_close(padded_t.logp_B_T, plain_t.logp_B_T, atol=1e-6, rtol=0)
    torch.testing.assert_close(padded_t.top1_B_T, plain_t.top1_B_T, atol=1e-6, rtol=0)
    # Keeping the padding rows would change the teacher's distribution: the cut is what matters.
    untruncated = teacher_pass(padded, batch, keep_vocab=vocab + 64)
    assert (untruncated.logp_B_T - plain_t.logp_B_T).abs().max() > 1e-3


def test_sequence_logprobs_all_tokens_matches_forward(tokenizer, student):
    vocab = len(tokenizer)
    batch = batch_of(
        tokenizer, make_datum(THREE_TURNS, vocab, 8), make_datum(TWO_TURNS, vocab, 9, index=1)
    )
    logp_B_T = sequence_logprobs(student, batch, which="all", chunk_size=4)
    with torch.no_grad():
        logits = student(
            input_ids=batch["tokens_B_T"], attention_mask=batch["attention_mask_B_T"]
        ).logits
    ref = F.log_softmax(logits[:, :-1], -1).gather(2, batch["tokens_B_T"][:, 1:, None]).squeeze(2)
    ref = ref * batch["attention_mask_B_T"][:, 1:]
    torch.testing.assert_close(logp_B_T[:, 1:].detach(), ref, atol=1e-5, rtol=0)
    assert (logp_B_T[:, 0] == 0).all() and (logp_B_T[1, 14:] == 0).all()  # row 1 has 14 real tokens
    logp_B_T.sum().backward()  # differentiable through the checkpointed chunks
    assert student.get_input_embeddings().weight.grad.abs().sum() > 0


def test_batch_without_response_tokens_scores_zero(tokenizer, teacher, student):
    batch = batch_of(tokenizer, make_datum([("prompt", 6)], len(tokenizer), 10))
    teacher_out = teacher_pass(teacher, batch, keep_vocab=len(tokenizer))
    out = student_pass(student, model_parts(teacher)[1], batch, teacher_out)
    assert teacher_out.logp_N.shape == (0,) and torch.equal(
        out.token_loss_B_T.detach(), torch.zeros(1, 6)
    )
    out.token_loss_B_T.sum().backward()  # a step with nothing to learn still runs
