"""ATOD (arXiv 2606.27814): annealed OPD -> RL with turn-level disagreement-uncertainty weights.

From the paper (only its abstract could be found here; no code was found): OPD dominates early
training and an RL term on the environment's reward is strengthened over training (an annealed
OPD-RL schedule); T-DUR (Turn-level Disagreement-Uncertainty Reweighting) softly amplifies
high-utility turns of long trajectories in the dense distillation loss.

Our reading, in the harness's terms (every formula below is ours, not the paper's):
  loss = (1 - lam(p)) * L_opd + lam(p) * L_rl,  lam(p) = atod_rl_max * ramp(p, start, end, shape)
  L_opd: the token loss weighted by the T-DUR factor of its turn, scale-preserving over the step
    w_u = 1 + atod_disagreement * D_u + atod_uncertainty * H_u, both terms in [0, 1]:
    D_u = turn mean of max(0, 1 - p_T(y) / p_S(y))  (the part of the student's sampled-token
          probability the teacher does not back: 0 where the teacher agrees or wants more)
    H_u = turn mean of 1 - p_S(y)                   (the student's uncertainty on its own tokens)
    (p_S at sampling time: the weights are fixed before the student's forward pass.)
  L_rl = (1/N) sum over response tokens of -A * exp(log p_S(y) - log p_S_old(y)), REINFORCE with
    A = won - mean(won over the step's trajectories); N is the step's global token count, so the
    micro-batches sum to the loss of the whole step exactly as for every other method.
It reads the environment's success signal: NOT verifier-free (marked † in every table).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from methods.batch import MethodBatch, Totals
from methods.schedule import ramp, require_progress


def rl_weight(progress: float, *, rl_max: float, start: float, end: float, shape: str) -> float:
    """The RL term's weight lam at `progress`: 0 until `start`, rl_max from `end` on."""
    return rl_max * ramp(progress, start, end, shape)


def _turn_means_U(batch: MethodBatch, values_B_T: Tensor) -> Tensor:
    response = batch.response_mask_B_T > 0
    turns_K = batch.turn_ids_B_T[response]
    sums_U = torch.zeros(batch.num_turns, dtype=torch.float64, device=values_B_T.device)
    sums_U.index_add_(0, turns_K, values_B_T[response].double())
    counts_U = torch.zeros_like(sums_U).index_add_(0, turns_K, torch.ones_like(sums_U[turns_K]))
    return (sums_U / counts_U.clamp(min=1.0)).float()


def tdur_U(batch: MethodBatch, *, disagreement: float, uncertainty: float) -> Tensor:
    """T-DUR factor per turn: 1 + a_d D_u + a_h H_u, in [1, 1 + a_d + a_h] (detached)."""
    if batch.old_logp_B_T is None or batch.teacher_logp_B_T is None:
        raise ValueError("turn_weight='tdur' needs old_logp_B_T (sampling log-probs) and teacher_logp_B_T "
                         "(teacher scoring) in every MethodBatch")
    old_B_T, teacher_B_T = batch.old_logp_B_T.detach().float(), batch.teacher_logp_B_T.detach().float()
    d_U = _turn_means_U(batch, (1.0 - torch.exp(teacher_B_T - old_B_T)).clamp(min=0.0))
    h_U = _turn_means_U(batch, 1.0 - torch.exp(old_B_T))
    return 1.0 + disagreement * d_U + uncertainty * h_U


def reward_mean(batches: Sequence[MethodBatch]) -> float:
    """Mean reward over the step's trajectories (each counted once, however many turns it has)."""
    rewards: dict[int, float] = {}
    for batch in batches:
        if batch.reward_U is None or batch.trajectory_U is None:
            raise ValueError("the RL term needs reward_U and trajectory_U in every MethodBatch (the trainer "
                             "fills them from the environment's outcome; they are not verifier-free)")
        for trajectory, reward in zip(batch.trajectory_U.tolist(), batch.reward_U.tolist(), strict=True):
            if rewards.setdefault(trajectory, reward) != reward:
                raise ValueError(f"trajectory {trajectory} has two rewards ({rewards[trajectory]}, {reward})")
    return sum(rewards.values()) / len(rewards) if rewards else 0.0


def reinforce_loss(batch: MethodBatch, totals: Totals) -> Tensor:
    """(1/N) sum -A ratio over this micro-batch's response tokens; its gradient is -A grad log p_S / N."""
    if batch.student_logp_B_T is None or batch.old_logp_B_T is None or batch.reward_U is None:
        raise ValueError("the RL term needs student_logp_B_T (with grad), old_logp_B_T and reward_U")
    if totals.reward_mean is None:
        raise ValueError("the RL term needs Totals.reward_mean: build totals with method.totals(batches)")
    response = batch.response_mask_B_T > 0
    advantage_U = batch.reward_U.float().to(batch.response_mask_B_T.device) - totals.reward_mean
    advantage_B_T = advantage_U[batch.turn_ids_B_T.clamp(min=0)]
    # Zero the inputs outside the responses BEFORE exp: a NaN there would give a NaN gradient
    # even through an unselected torch.where branch (0 * exp(NaN) = NaN).
    logp_B_T = torch.where(response, batch.student_logp_B_T, torch.zeros_like(batch.student_logp_B_T))
    old_B_T = batch.old_logp_B_T.detach().to(logp_B_T.dtype)
    ratio_B_T = torch.exp(logp_B_T - torch.where(response, old_B_T, torch.zeros_like(old_B_T)))
    loss_B_T = torch.where(response, -advantage_B_T * ratio_B_T, torch.zeros_like(ratio_B_T))
    return loss_B_T.sum() / max(totals.token_count, 1.0)


def step_progress(batch: MethodBatch) -> float:
    """Training progress of the batch (the annealing schedule reads it)."""
    return require_progress(batch.progress, "atod's OPD->RL annealing")
