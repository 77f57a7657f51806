"""Per-token losses (the `estimator` knob of sage_opd.md): full_kl, sampled, jsd; nll for sft.

Every estimator maps student/teacher logits at N response positions to a loss_N. Gradients flow
through the student logits only: the teacher is scored under no_grad and is detached here again so
a caller that forgets cannot leak gradient into it. All maths runs in at least float32 (bf16 logits
would make log-softmax differences of nearby vocab entries noisy); float64 inputs stay float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ESTIMATORS: tuple[str, ...] = ("full_kl", "sampled", "jsd")  # distillation estimators
TOKEN_LOSSES: tuple[str, ...] = (*ESTIMATORS, "nll")  # nll: sft's loss, needs no teacher


def _upcast(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def token_logprobs(logits_N_V: Tensor, ids_N: Tensor, dim: int = -1) -> Tensor:
    """log p(ids_N) under logits_N_V (at least float32), the vocabulary along `dim`: THE
    log-prob/NLL of the project (nll = -this)."""
    logp_N_V = F.log_softmax(_upcast(logits_N_V), dim=dim)
    return logp_N_V.gather(dim, ids_N.long().unsqueeze(dim)).squeeze(dim)


def _check_vocab(student_logits_N_V: Tensor, teacher_logits_N_V: Tensor) -> None:
    if student_logits_N_V.shape[-1] != teacher_logits_N_V.shape[-1]:
        raise ValueError(
            f"student logits have vocab size {student_logits_N_V.shape[-1]} but teacher logits have "
            f"{teacher_logits_N_V.shape[-1]}; truncate the teacher's padding rows to the student's "
            "size before calling (harness scoring does this), or use models with the same tokenizer"
        )
    if student_logits_N_V.shape[:-1] != teacher_logits_N_V.shape[:-1]:
        raise ValueError(
            f"student logits {tuple(student_logits_N_V.shape)} and teacher logits "
            f"{tuple(teacher_logits_N_V.shape)} must cover the same positions"
        )


def _log_probs(student_logits_N_V: Tensor, teacher_logits_N_V: Tensor, temperature: float):
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_vocab(student_logits_N_V, teacher_logits_N_V)
    student_logp_N_V = F.log_softmax(_upcast(student_logits_N_V), dim=-1)
    teacher_logp_N_V = F.log_softmax(_upcast(teacher_logits_N_V.detach()) / temperature, dim=-1)
    return student_logp_N_V, teacher_logp_N_V


def reverse_kl(student_logits_N_V: Tensor, teacher_logits_N_V: Tensor) -> Tensor:
    """Full-vocabulary reverse KL(S||T) = sum_v p_S (log p_S - log p_T) per position (N,)."""
    student_logp_N_V, teacher_logp_N_V = _log_probs(student_logits_N_V, teacher_logits_N_V, 1.0)
    return (student_logp_N_V.exp() * (student_logp_N_V - teacher_logp_N_V)).sum(-1)


def _generalized_jsd(student_logp_N_V: Tensor, teacher_logp_N_V: Tensor, beta: float) -> Tensor:
    # GKD's JSD(beta) with mixture M = beta*T + (1-beta)*S:
    #   beta*KL(T||M) + (1-beta)*KL(S||M).
    # Its value vanishes at both ends, so (like GKD/TRL) the end points are the plain KLs:
    # beta=0 -> forward KL(T||S) (mass-covering), beta=1 -> reverse KL(S||T) (mode-seeking).
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must lie in [0, 1], got {beta}")
    student_p_N_V, teacher_p_N_V = student_logp_N_V.exp(), teacher_logp_N_V.exp()
    if beta == 0.0:
        return (teacher_p_N_V * (teacher_logp_N_V - student_logp_N_V)).sum(-1)
    if beta == 1.0:
        return (student_p_N_V * (student_logp_N_V - teacher_logp_N_V)).sum(-1)
    # log M via logsumexp: never forms beta*p_T + (1-beta)*p_S in probability space, where tiny
    # probabilities underflow and log(0) would give -inf.
    mixture_logp_N_V = torch.logsumexp(
        torch.stack([teacher_logp_N_V + math.log(beta), student_logp_N_V + math.log1p(-beta)]),
        dim=0,
    )
    kl_teacher_N = (teacher_p_N_V * (teacher_logp_N_V - mixture_logp_N_V)).sum(-1)
    kl_student_N = (student_p_N_V * (student_logp_N_V - mixture_logp_N_V)).sum(-1)
    return beta * kl_teacher_N + (1.0 - beta) * kl_student_N


def _sampled_surrogate(
    student_logp_N_V: Tensor,
    teacher_logp_N_V: Tensor,
    sampled_ids_N: Tensor | None,
    old_logp_N: Tensor | None,
    clip_eps: float | None,
) -> Tensor:
    # Policy-gradient surrogate (Tinker / Trinity-RFT form). Its VALUE is not a KL: at ratio=1 it
    # equals log p_S_old(y) - log p_T(y), a one-sample KL estimate, but what matters is the
    # gradient, -A * grad log p_S(y) = (log p_S(y) - log p_T(y)) * grad log p_S(y), which is the
    # score-function estimate of grad KL(S||T) for y ~ p_S.
    if sampled_ids_N is None or old_logp_N is None:
        raise ValueError(
            "estimator 'sampled' needs sampled_ids_N and old_logp_N (rollout log-probs)"
        )
    ids_N1 = sampled_ids_N.long().unsqueeze(-1)
    student_logp_N = student_logp_N_V.gather(-1, ids_N1).squeeze(-1)
    teacher_logp_N = teacher_logp_N_V.gather(-1, ids_N1).squeeze(-1)
    old_logp_N = old_logp_N.detach().to(student_logp_N.dtype)
    advantage_N = teacher_logp_N - old_logp_N  # both constant: sg[...]
    ratio_N = torch.exp(student_logp_N - old_logp_N)
    loss_N = -ratio_N * advantage_N
    if clip_eps is None:
        return loss_N
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps}")
    clipped_N = -torch.clamp(ratio_N, 1.0 - clip_eps, 1.0 + clip_eps) * advantage_N
    return torch.maximum(loss_N, clipped_N)  # PPO's pessimistic bound


def token_loss(
    estimator: str,
    student_logits_N_V: Tensor,
    teacher_logits_N_V: Tensor | None,
    sampled_ids_N: Tensor | None = None,
    old_logp_N: Tensor | None = None,
    *,
    beta: float = 0.5,
    clip_eps: float | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token loss_N (float32, or float64 for float64 logits) of `estimator`; teacher logits are divided by `temperature`."""
    if estimator == "nll":
        if sampled_ids_N is None:
            raise ValueError("estimator 'nll' needs sampled_ids_N (the target tokens)")
        return -token_logprobs(student_logits_N_V, sampled_ids_N)
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {estimator!r}; choose one of {', '.join(TOKEN_LOSSES)}"
        )
    if teacher_logits_N_V is None:
        raise ValueError(f"estimator {estimator!r} needs teacher logits; only 'nll' works without")
    student_logp_N_V, teacher_logp_N_V = _log_probs(
        student_logits_N_V, teacher_logits_N_V, temperature
    )
    if estimator == "full_kl":
        return (student_logp_N_V.exp() * (student_logp_N_V - teacher_logp_N_V)).sum(-1)
    if estimator == "jsd":
        return _generalized_jsd(student_logp_N_V, teacher_logp_N_V, beta)
    return _sampled_surrogate(
        student_logp_N_V, teacher_logp_N_V, sampled_ids_N, old_logp_N, clip_eps
    )
