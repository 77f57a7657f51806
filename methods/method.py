"""The one Method interface: knobs of sage_opd.md plus weights -> totals -> loss over MethodBatch.

Use per optimizer step (gradient accumulation keeps the loss scale of one big batch):
    totals = method.totals(batches)      # teacher signals only: token_loss_B_T may still be None
    for b in batches:                    # then one student forward + backward per micro-batch
        loss, stats = method.loss(replace(b, token_loss_B_T=...), totals); loss.backward()
    step_stats = merge_stats(all_stats)
The per-micro-batch losses sum exactly to the loss of the whole step as one batch.
Under DDP, totals are all-reduced so every rank divides by the global N (and S); the step loss is
then the SUM of the ranks' shares, while DDP AVERAGES gradients over ranks: multiply each rank's
loss by world_size before backward to keep the single-process scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from torch import Tensor

from methods import estimators, weighting
from methods.batch import MethodBatch, Totals
from methods.stats import batch_stats

CHOICES: dict[str, tuple[str, ...]] = {
    "trajectory_source": ("student", "teacher", "expert"),
    "estimator": estimators.TOKEN_LOSSES,
    "judge_mode": ("argmax", "expected"),
    "confidence": ("token", "turn", "none"),
    "gate": ("judge", "none", "oracle"),
    "normalize": ("scale_preserving", "mean"),
    "norm_scope": ("batch", "sequence"),
}


@dataclass(frozen=True)
class Method:
    """A training method: where its trajectories come from and how token losses become one loss."""

    name: str
    """Registry name; recorded in every run and table."""
    trajectory_source: str = "student"
    """Policy that generates training trajectories: student (on-policy), teacher or expert (sft)."""
    estimator: str = "full_kl"
    """Token loss: full_kl | sampled | jsd (distillation), nll (sft only)."""
    gate: str = "judge"
    """Turn gate g_t: judge (Skip/Weak/Strong labels), none (1), oracle (env verifier labels)."""
    judge_mode: str = "argmax"
    """argmax: weight of the most likely label; expected: sum of label probs times weights."""
    alpha: float = 0.5
    """Gate weight of a Weak turn (Skip 0, Strong 1)."""
    confidence: str = "token"
    """Token weight c: token (teacher top-1 prob), turn (its mean over the turn), none (1)."""
    normalize: str = "scale_preserving"
    """scale_preserving: w * N / sum w (mean weight 1); mean: plain (1/N) sum w * l."""
    norm_scope: str = "batch"
    """batch: one rescale over the optimizer batch; sequence: each sequence's mean weight is 1."""
    beta: float = 0.5
    """jsd interpolation: 0 forward KL(T||S), 1 reverse KL(S||T) (GKD/TRL convention)."""
    clip_eps: float | None = None
    """PPO clip range of the sampled estimator's importance ratio; None: no clipping."""
    temperature: float = 1.0
    """Teacher logits are divided by this before the token loss."""

    def __post_init__(self) -> None:
        for knob, allowed in CHOICES.items():
            if getattr(self, knob) not in allowed:
                raise ValueError(
                    f"method {self.name!r}: {knob}={getattr(self, knob)!r} is not one of {allowed}"
                )
        distills = self.trajectory_source == "student"
        if distills == (self.estimator == "nll"):
            raise ValueError(
                f"method {self.name!r}: estimator {self.estimator!r} with trajectory_source "
                f"{self.trajectory_source!r}; nll is for teacher/expert trajectories (sft) only, "
                f"on-policy methods use one of {estimators.ESTIMATORS}"
            )
        for knob, low, high in (("alpha", 0.0, 1.0), ("beta", 0.0, 1.0)):
            if not low <= getattr(self, knob) <= high:
                raise ValueError(f"method {self.name!r}: {knob} must lie in [{low}, {high}]")
        if self.temperature <= 0 or (self.clip_eps is not None and self.clip_eps <= 0):
            raise ValueError(f"method {self.name!r}: temperature and clip_eps must be > 0")

    @property
    def needs_judge(self) -> bool:
        """True when the teacher must label every turn Skip/Weak/Strong."""
        return self.gate == "judge"

    @property
    def verifier_free(self) -> bool:
        """False only for the oracle gate, which reads the environment's success signal."""
        return self.gate != "oracle"

    @property
    def needs_teacher_logits(self) -> bool:
        """False for sft (nll): no teacher forward over the trajectories."""
        return self.estimator != "nll"

    @classmethod
    def knobs(cls) -> tuple[str, ...]:
        """Names of the settable fields (everything but name)."""
        return tuple(f.name for f in fields(cls) if f.name != "name")

    def token_loss(
        self,
        student_logits_N_V: Tensor,
        teacher_logits_N_V: Tensor | None = None,
        sampled_ids_N: Tensor | None = None,
        old_logp_N: Tensor | None = None,
    ) -> Tensor:
        """Per-token loss_N of this method's estimator with its beta/clip_eps/temperature."""
        return estimators.token_loss(
            self.estimator, student_logits_N_V, teacher_logits_N_V, sampled_ids_N, old_logp_N,
            beta=self.beta, clip_eps=self.clip_eps, temperature=self.temperature,
        )  # fmt: skip

    def weights(self, batch: MethodBatch) -> Tensor:
        """Raw detached weights w_B_T = g_t * c_t,j (0 outside responses)."""
        return weighting.raw_weights_B_T(
            batch, gate=self.gate, judge_mode=self.judge_mode, alpha=self.alpha,
            confidence=self.confidence,
        )  # fmt: skip

    def totals(self, batches: Sequence[MethodBatch]) -> Totals:
        """Global N and sum w over every micro-batch of the optimizer step (all-reduced if DDP)."""
        return weighting.step_totals(batches, [self.weights(b) for b in batches], self.norm_scope)

    def loss(self, batch: MethodBatch, totals: Totals) -> tuple[Tensor, dict[str, float]]:
        """This micro-batch's share of the step loss (to backward) and its stats."""
        w_raw_B_T = self.weights(batch)
        w_norm_B_T = weighting.normalized_weights_B_T(
            batch, w_raw_B_T, totals, self.normalize, self.norm_scope
        )
        loss = weighting.weighted_loss(batch, w_norm_B_T, totals)
        return loss, batch_stats(batch, w_raw_B_T, w_norm_B_T, loss, totals)
