"""Per-micro-batch statistics of a method's loss, and their merge into one line per step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from methods.batch import LABELS, MethodBatch, Totals


def _labels_U(batch: MethodBatch) -> Tensor | None:
    # Counted labels are the judge's argmax (invalid turns count as Strong, as they are weighted),
    # or the oracle's labels when no judge ran.
    if batch.judge_probs_U_3 is not None:
        labels_U = batch.judge_probs_U_3.argmax(-1)
        if batch.judge_valid_U is not None:
            labels_U = torch.where(
                batch.judge_valid_U.bool(), labels_U, torch.full_like(labels_U, 2)
            )
        return labels_U
    return batch.oracle_labels_U


def batch_stats(
    batch: MethodBatch, w_raw_B_T: Tensor, w_norm_B_T: Tensor, loss: Tensor, totals: Totals
) -> dict[str, float]:
    """Loss, token/turn counts, label fractions, weights before/after normalization, confidence."""
    response = batch.response_mask_B_T > 0
    stats: dict[str, float] = {
        "loss": float(loss.detach()),
        "tokens": float(response.sum()),
        "turns": float(batch.num_turns),
        "all_skipped": float(totals.all_skipped),
    }
    if stats["tokens"] > 0:
        for prefix, w_B_T in (("weight_raw", w_raw_B_T), ("weight", w_norm_B_T)):
            w_K = w_B_T[response].float()
            stats |= {f"{prefix}_mean": float(w_K.mean()), f"{prefix}_min": float(w_K.min()),
                      f"{prefix}_max": float(w_K.max())}  # fmt: skip
        if batch.token_loss_B_T is not None:
            stats["token_loss_mean"] = float(batch.token_loss_B_T.detach()[response].float().mean())
        if batch.teacher_top1_B_T is not None:
            stats["teacher_confidence_mean"] = float(
                batch.teacher_top1_B_T[response].float().mean()
            )
    labels_U = _labels_U(batch)
    if labels_U is not None and labels_U.numel():
        for index, label in enumerate(LABELS):
            stats[f"label_{label}_frac"] = float((labels_U == index).float().mean())
        if batch.judge_valid_U is not None:
            stats["judge_invalid_frac"] = float((~batch.judge_valid_U.bool()).float().mean())
    return stats


def merge_stats(per_batch: Sequence[dict[str, float]]) -> dict[str, float]:
    """One step's stats: sums of loss/tokens/turns, token-weighted *_mean, turn-weighted *_frac."""
    merged: dict[str, float] = {}
    keys = dict.fromkeys(k for stats in per_batch for k in stats)
    for key in keys:
        present = [s for s in per_batch if key in s]
        if key.endswith("_min"):
            merged[key] = min(s[key] for s in present)
        elif key.endswith("_max"):
            merged[key] = max(s[key] for s in present)
        elif key.endswith(("_mean", "_frac")):
            count = "tokens" if key.endswith("_mean") else "turns"
            total = sum(s[count] for s in present)
            merged[key] = sum(s[key] * s[count] for s in present) / total if total else 0.0
        elif key == "all_skipped":
            merged[key] = max(s[key] for s in present)
        else:
            merged[key] = sum(s[key] for s in present)
    return merged
