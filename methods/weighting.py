"""SAGE weighting maths (sage_opd.md sections 1-3): turn gate, teacher confidence, normalization."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from methods.batch import MethodBatch, Totals


def _check_batch(batch: MethodBatch) -> None:
    mask_B_T, turn_ids_B_T = batch.response_mask_B_T, batch.turn_ids_B_T
    if mask_B_T.shape != turn_ids_B_T.shape:
        raise ValueError(
            f"response_mask_B_T {tuple(mask_B_T.shape)} and turn_ids_B_T "
            f"{tuple(turn_ids_B_T.shape)} must have the same shape"
        )
    response_turns = turn_ids_B_T[mask_B_T > 0]
    num_turns = batch.num_turns
    if response_turns.numel() and (response_turns.min() < 0 or response_turns.max() >= num_turns):
        raise ValueError(
            f"every response token needs a turn id in 0..{num_turns - 1} (turns are numbered within "
            f"the micro-batch); got ids {response_turns.min().item()}..{response_turns.max().item()}"
        )


def gate_U(batch: MethodBatch, gate: str, judge_mode: str, alpha: float) -> Tensor:
    """Turn gate g_U: label weight Skip 0 / Weak alpha / Strong 1 (or 1 everywhere for gate='none')."""
    device = batch.response_mask_B_T.device
    if gate == "none":
        return torch.ones(batch.num_turns, device=device)
    label_weight_3 = torch.tensor([0.0, alpha, 1.0], device=device)
    if gate == "oracle":
        if batch.oracle_labels_U is None:
            raise ValueError(
                "gate='oracle' needs oracle_labels_U (the environment verifier labels)"
            )
        return label_weight_3[batch.oracle_labels_U.long()]
    probs_U_3 = batch.judge_probs_U_3
    if probs_U_3 is None:
        raise ValueError("gate='judge' needs judge_probs_U_3; run the judge or use gate='none'")
    if probs_U_3.ndim != 2 or probs_U_3.shape[1] != 3:
        raise ValueError(f"judge_probs_U_3 must have shape (U, 3), got {tuple(probs_U_3.shape)}")
    probs_U_3 = probs_U_3.detach().float()
    if probs_U_3.numel() and (probs_U_3.sum(-1) - 1.0).abs().max() > 1e-3:
        raise ValueError("judge_probs_U_3 rows must sum to 1: renormalize over the 3 label tokens")
    if judge_mode == "argmax":
        g_U = label_weight_3[probs_U_3.argmax(-1)]
    else:  # 'expected'
        g_U = probs_U_3 @ label_weight_3
    if batch.judge_valid_U is not None:
        # Fail closed: a turn the judge could not read is distilled at full weight, never skipped.
        g_U = torch.where(batch.judge_valid_U.bool(), g_U, torch.ones_like(g_U))
    return g_U


def confidence_B_T(batch: MethodBatch, confidence: str) -> Tensor:
    """Token weight c: teacher top-1 prob per token ('token'), its turn mean ('turn'), or 1 ('none')."""
    mask_B_T = batch.response_mask_B_T
    if confidence == "none":
        return torch.ones_like(mask_B_T, dtype=torch.float32)
    if batch.teacher_top1_B_T is None:
        raise ValueError(f"confidence={confidence!r} needs teacher_top1_B_T from teacher scoring")
    top1_B_T = batch.teacher_top1_B_T.detach().float()
    if confidence == "token":
        return top1_B_T
    response = mask_B_T > 0
    turns_K = batch.turn_ids_B_T[response]
    sums_U = torch.zeros(batch.num_turns, device=mask_B_T.device).index_add_(
        0, turns_K, top1_B_T[response]
    )
    counts_U = torch.zeros_like(sums_U).index_add_(0, turns_K, torch.ones_like(top1_B_T[response]))
    mean_U = sums_U / counts_U.clamp(min=1.0)
    return mean_U[batch.turn_ids_B_T.clamp(min=0)]


def raw_weights_B_T(
    batch: MethodBatch, *, gate: str, judge_mode: str, alpha: float, confidence: str
) -> Tensor:
    """Detached w = g_t * c_t,j on response tokens, exactly 0 elsewhere."""
    _check_batch(batch)
    g_U = gate_U(batch, gate, judge_mode, alpha)
    c_B_T = confidence_B_T(batch, confidence)
    w_B_T = g_U[batch.turn_ids_B_T.clamp(min=0)] * c_B_T
    return torch.where(batch.response_mask_B_T > 0, w_B_T, torch.zeros_like(w_B_T)).detach()


def step_totals(
    batches: Sequence[MethodBatch], weights: Sequence[Tensor], norm_scope: str
) -> Totals:
    """N and sum w over all micro-batches of the step, summed over ranks when distributed."""
    token_count = sum(float(b.response_mask_B_T.double().sum()) for b in batches)
    weight_sum = sum(float(w.double().sum()) for w in weights)
    if dist.is_available() and dist.is_initialized():
        # Global, not per-rank: every rank must divide by the same N and S or the ranks'
        # gradients (averaged by DDP) would carry different scales.
        device = batches[0].response_mask_B_T.device if batches else "cpu"
        both_2 = torch.tensor([token_count, weight_sum], dtype=torch.float64, device=device)
        dist.all_reduce(both_2, op=dist.ReduceOp.SUM)
        token_count, weight_sum = both_2.tolist()
    totals = Totals(token_count=token_count, weight_sum=weight_sum)
    if norm_scope == "sequence":
        # Sequences are assumed rank-local (a trajectory never spans ranks): no all_reduce here.
        for batch, w_B_T in zip(batches, weights, strict=True):
            if batch.sequence_ids_B is None:
                raise ValueError("norm_scope='sequence' needs sequence_ids_B in every MethodBatch")
            counts_B = batch.response_mask_B_T.double().sum(-1).tolist()
            sums_B = w_B_T.double().sum(-1).tolist()
            for seq, count, wsum in zip(
                batch.sequence_ids_B.tolist(), counts_B, sums_B, strict=True
            ):
                totals.sequence_token_count[seq] = totals.sequence_token_count.get(seq, 0.0) + count
                totals.sequence_weight_sum[seq] = totals.sequence_weight_sum.get(seq, 0.0) + wsum
    return totals


def normalized_weights_B_T(
    batch: MethodBatch, w_B_T: Tensor, totals: Totals, normalize: str, norm_scope: str
) -> Tensor:
    """w~: 'mean' keeps w; 'scale_preserving' rescales so the mean weight over the scope is 1."""
    if normalize == "mean":
        return w_B_T
    if norm_scope == "batch":
        scale = totals.token_count / totals.weight_sum if totals.weight_sum > 0 else 0.0
        return w_B_T * scale
    if batch.sequence_ids_B is None:
        raise ValueError("norm_scope='sequence' needs sequence_ids_B in every MethodBatch")
    # A sequence whose turns were all skipped (S_s = 0) keeps weight 0: it adds nothing.
    scale_B = [
        totals.sequence_token_count[s] / totals.sequence_weight_sum[s]
        if totals.sequence_weight_sum.get(s, 0.0) > 0
        else 0.0
        for s in batch.sequence_ids_B.tolist()
    ]
    return w_B_T * torch.tensor(scale_B, dtype=w_B_T.dtype, device=w_B_T.device)[:, None]


def weighted_loss(batch: MethodBatch, w_norm_B_T: Tensor, totals: Totals) -> Tensor:
    """(1/N) sum w~ * l over this micro-batch; N is the step's global token count."""
    if batch.token_loss_B_T is None:
        raise ValueError(
            "MethodBatch.token_loss_B_T is None: fill it (estimator output) before loss"
        )
    loss_B_T = batch.token_loss_B_T
    # where, not a product with the mask: garbage (even NaN) outside responses must not leak in.
    loss_B_T = torch.where(batch.response_mask_B_T > 0, loss_B_T, torch.zeros_like(loss_B_T))
    # All weights 0 (all skipped) gives an exact, graph-connected 0 with zero gradient.
    return (w_norm_B_T * loss_B_T).sum() / max(totals.token_count, 1.0)
