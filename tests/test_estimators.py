"""Token-loss estimators against hand-computed 3-token examples and TRL's generalized_jsd_loss."""

import math
import os

import pytest
import torch

from methods.estimators import reverse_kl, token_loss

LN2, LN3 = math.log(2.0), math.log(3.0)
# Student S = [1/2, 1/4, 1/4], teacher T = [1/8, 1/8, 3/4] over a 3-token vocabulary.
S_3 = torch.tensor([0.5, 0.25, 0.25])
T_3 = torch.tensor([0.125, 0.125, 0.75])


def _logits(probs_V: torch.Tensor) -> torch.Tensor:
    return probs_V.log().unsqueeze(0)  # (1, V): log-probs are valid logits


def test_full_kl_hand_example():
    # KL(S||T) = 1/2 ln(4) + 1/4 ln(2) + 1/4 ln(1/3) = 1.25 ln2 - 0.25 ln3 = 0.59178
    expected = 1.25 * LN2 - 0.25 * LN3
    got = token_loss("full_kl", _logits(S_3), _logits(T_3))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert reverse_kl(_logits(S_3), _logits(T_3)).item() == pytest.approx(expected, abs=1e-6)


def test_jsd_hand_examples():
    # beta=0: forward KL(T||S) = 1/8 ln(1/4) + 1/8 ln(1/2) + 3/4 ln(3) = 0.75 ln3 - 0.375 ln2
    forward = 0.75 * LN3 - 0.375 * LN2
    # beta=0.5: M = (S+T)/2 = [5/16, 3/16, 1/2];
    # KL(S||M) = 1/2 ln(8/5) + 1/4 ln(4/3) + 1/4 ln(1/2)
    # KL(T||M) = 1/8 ln(2/5) + 1/8 ln(2/3) + 3/4 ln(3/2); JSD = (KL(T||M) + KL(S||M)) / 2
    kl_s_m = 0.5 * math.log(1.6) + 0.25 * math.log(4 / 3) + 0.25 * math.log(0.5)
    kl_t_m = 0.125 * math.log(0.4) + 0.125 * math.log(2 / 3) + 0.75 * math.log(1.5)
    cases = {0.0: forward, 0.5: 0.5 * (kl_s_m + kl_t_m), 1.0: 1.25 * LN2 - 0.25 * LN3}
    for beta, expected in cases.items():
        got = token_loss("jsd", _logits(S_3), _logits(T_3), beta=beta).item()
        assert got == pytest.approx(expected, abs=1e-6), beta


def test_teacher_temperature_divides_teacher_logits_only():
    # Teacher logits [0, 0, 2 ln2] at temperature 2 -> [0, 0, ln2] -> T' = [1/4, 1/4, 1/2];
    # KL(S||T') = 1/2 ln2 + 0 + 1/4 ln(1/2) = 0.25 ln2 (the student is not rescaled).
    teacher_logits = torch.tensor([[0.0, 0.0, 2 * LN2]])
    got = token_loss("full_kl", _logits(S_3), teacher_logits, temperature=2.0).item()
    assert got == pytest.approx(0.25 * LN2, abs=1e-6)


def test_vocab_mismatch_names_both_sizes():
    with pytest.raises(ValueError, match=r"vocab size 3 .* 5"):
        token_loss("full_kl", torch.zeros(2, 3), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="unknown estimator 'kl'"):
        token_loss("kl", torch.zeros(2, 3), torch.zeros(2, 3))


def test_full_kl_gradient_reaches_student_only():
    student = _logits(S_3).clone().requires_grad_(True)
    teacher = _logits(T_3).clone().requires_grad_(True)
    token_loss("full_kl", student, teacher).sum().backward()
    assert teacher.grad is None and student.grad is not None


def test_sampled_value_and_gradient_at_ratio_one():
    # y = 0, old = log p_S(y): ratio 1, A = ln(1/8) - ln(1/2) = -ln4, loss = -A = ln4.
    # d loss / d z = -A * (onehot(y) - p_S) = ln4 * [1/2, -1/4, -1/4]: the score-function
    # estimate (log p_S(y) - log p_T(y)) * grad log p_S(y) of grad KL(S||T).
    student = _logits(S_3).clone().requires_grad_(True)
    ids = torch.tensor([0])
    old = torch.log(S_3[:1])
    loss = token_loss("sampled", student, _logits(T_3), ids, old)
    assert loss.item() == pytest.approx(2 * LN2, abs=1e-6)
    loss.sum().backward()
    expected = 2 * LN2 * torch.tensor([[0.5, -0.25, -0.25]])
    torch.testing.assert_close(student.grad, expected, atol=1e-6, rtol=0)


def test_sampled_ppo_clip_is_pessimistic():
    student = _logits(S_3).clone().requires_grad_(True)
    # ratio 1.5 (old log-prob lowered by ln1.5), eps 0.2.
    # y=2: A = ln(3/4) - ln(1/4) + ln(1.5) = ln4.5 > 0 -> clipped: loss -1.2 ln4.5, zero grad.
    # y=0: A = ln(1/8) - ln(1/2) + ln(1.5) = ln0.375 < 0 -> unclipped: loss -1.5 ln0.375.
    ids = torch.tensor([2, 0])
    old = torch.log(S_3[ids]) - math.log(1.5)
    both = student.expand(2, 3)
    loss = token_loss("sampled", both, _logits(T_3).expand(2, 3), ids, old, clip_eps=0.2)
    torch.testing.assert_close(
        loss.detach(), torch.tensor([-1.2 * math.log(4.5), -1.5 * math.log(0.375)])
    )
    g_clipped = torch.autograd.grad(loss[0], student, retain_graph=True)[0]
    g_free = torch.autograd.grad(loss[1], student)[0]
    assert g_clipped.abs().max() == 0 and g_free.abs().max() > 0.1


def test_nll_is_negative_log_prob_of_targets():
    got = token_loss("nll", _logits(S_3).expand(2, 3), None, torch.tensor([0, 2]))
    torch.testing.assert_close(got, torch.tensor([LN2, 2 * LN2]))


def _trl_generalized_jsd():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # its "unstable API" warning
    try:  # TRL 1.x keeps GKD under trl.experimental; older releases exported it at top level
        from trl.experimental.gkd import GKDTrainer
    except ImportError:
        from trl import GKDTrainer
    return GKDTrainer.generalized_jsd_loss


def test_matches_trl_generalized_jsd_loss():
    # TRL convention (checked here): beta=1 is reverse KL(S||T), beta=0 forward KL(T||S), and
    # the mixture is beta*T + (1-beta)*S, the same as ours. reduction='none' returns the
    # per-vocab terms (N, V); summing over V gives our per-token loss.
    trl_jsd = _trl_generalized_jsd()
    gen = torch.Generator().manual_seed(0)
    student_N_V = (3 * torch.randn(8, 50, generator=gen)).requires_grad_(True)
    teacher_N_V = 3 * torch.randn(8, 50, generator=gen)
    ours = token_loss("full_kl", student_N_V, teacher_N_V)
    theirs = trl_jsd(student_N_V, teacher_N_V, beta=1.0, reduction="none").sum(-1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for beta in (0.0, 0.5, 0.9):
        ours = token_loss("jsd", student_N_V, teacher_N_V, beta=beta)
        theirs = trl_jsd(student_N_V, teacher_N_V, beta=beta, reduction="none").sum(-1)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        grad_ours = torch.autograd.grad(ours.sum(), student_N_V)[0]
        grad_theirs = torch.autograd.grad(theirs.sum(), student_N_V)[0]
        torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-5, rtol=1e-5)
