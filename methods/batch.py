"""The plain-tensor structures a method sees: one micro-batch (MethodBatch) and step totals."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

LABELS: tuple[str, ...] = ("skip", "weak", "strong")  # column order of judge_probs_U_3


@dataclass(frozen=True)
class MethodBatch:
    """One micro-batch: B rows (usually one trajectory each) of T token positions, U turns.

    Only `token_loss_B_T` carries gradient. It may be None while the trainer computes weights
    and totals for every micro-batch of a step (they need teacher signals only), so the student
    forward with grad can run one micro-batch at a time afterwards.
    """

    response_mask_B_T: Tensor
    """1.0 on the student's response tokens (the only trained positions), 0.0 elsewhere."""
    turn_ids_B_T: Tensor
    """Long; turn index 0..U-1 (numbered within this micro-batch) on responses, -1 elsewhere."""
    token_loss_B_T: Tensor | None = None
    """Per-token loss from an estimator (grad); ignored (even if NaN) outside the response mask."""
    teacher_top1_B_T: Tensor | None = None
    """Teacher top-1 probability max_v p_T(v) per position, detached; needed by confidence != none."""
    judge_probs_U_3: Tensor | None = None
    """(Skip, Weak, Strong) probabilities per turn, renormalized over the three label tokens."""
    oracle_labels_U: Tensor | None = None
    """Environment-verifier label per turn, 0 Skip / 1 Weak / 2 Strong; only gate='oracle' reads it."""
    judge_valid_U: Tensor | None = None
    """Bool; False for empty/unparseable turns, whose gate fails closed to Strong. None: all valid."""
    sequence_ids_B: Tensor | None = None
    """Long id per row, unique within the optimizer step (on this rank); norm_scope='sequence'."""
    progress: float | None = None
    """Training progress step / train.steps in [0, 1]; the tcod curriculum and atod's annealing read it."""
    turn_index_U: Tensor | None = None
    """Long; each turn's number within its own trajectory (0 = the first turn); tcod reads it."""
    num_turns_U: Tensor | None = None
    """Long; the number of turns of each turn's trajectory; tcod reads it."""
    old_logp_B_T: Tensor | None = None
    """Student log p of each sampled token at sampling time, detached; atod's T-DUR and RL ratio."""
    teacher_logp_B_T: Tensor | None = None
    """Teacher log p of each sampled token, detached; atod's T-DUR disagreement."""
    student_logp_B_T: Tensor | None = None
    """Student log p of each sampled token WITH grad (atod's RL term); None until the student forward."""
    trajectory_U: Tensor | None = None
    """Long; each turn's trajectory, numbered within the optimizer step (the RL baseline's unit)."""
    reward_U: Tensor | None = None
    """The env's reward of each turn's trajectory (won 1.0 / 0.0): read by the RL term only, NOT verifier-free."""

    @property
    def num_turns(self) -> int:
        """U, from the judge or oracle labels when given, else the largest turn id + 1."""
        if self.judge_probs_U_3 is not None:
            return int(self.judge_probs_U_3.shape[0])
        if self.oracle_labels_U is not None:
            return int(self.oracle_labels_U.shape[0])
        return int(self.turn_ids_B_T.max().item()) + 1 if self.turn_ids_B_T.numel() else 0


@dataclass
class Totals:
    """Sums over ALL micro-batches of one optimizer step (and all ranks) that fix the loss scale."""

    token_count: float
    """N: response tokens in the whole optimizer batch."""
    weight_sum: float
    """S: sum of raw weights w = g * c over those tokens."""
    sequence_token_count: dict[int, float] = field(default_factory=dict)
    """Per sequence id: response tokens (filled for norm_scope='sequence' only)."""
    sequence_weight_sum: dict[int, float] = field(default_factory=dict)
    """Per sequence id: sum of raw weights (filled for norm_scope='sequence' only)."""
    reward_mean: float | None = None
    """Mean reward over the step's trajectories: the RL term's baseline (filled by atod only)."""

    @property
    def all_skipped(self) -> bool:
        """True when every weight is zero (e.g. the judge skipped every turn): the step's loss is 0."""
        return self.weight_sum == 0.0
