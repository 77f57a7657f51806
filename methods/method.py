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

from methods import atod, estimators, tcod, weighting
from methods.batch import MethodBatch, Totals
from methods.guidance import curriculum_p
from methods.schedule import SHAPES
from methods.stats import batch_stats

CHOICES: dict[str, tuple[str, ...]] = {
    "trajectory_source": ("student", "teacher", "expert"),
    "estimator": estimators.TOKEN_LOSSES,
    "judge_mode": ("argmax", "expected"),
    "confidence": ("token", "turn", "none"),
    "gate": ("judge", "none", "oracle"),
    "normalize": ("scale_preserving", "mean"),
    "norm_scope": ("batch", "sequence"),
    "guide_shape": SHAPES,
    "curriculum": ("none", "tcod"),
    "tcod_order": tcod.ORDERS,
    "tcod_unit": tcod.UNITS,
    "tcod_shape": SHAPES,
    "turn_weight": ("none", "tdur"),
    "atod_shape": SHAPES,
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
    guide_start: float = 0.0
    """Guided-OPD p0: chance the teacher acts on a training turn at step 0 (0 = no guidance)."""
    guide_end: float = 0.8
    """Where the guidance chance reaches 0, as a fraction of train.steps, in (0, 1]."""
    guide_shape: str = "linear"
    """Decay of the guidance chance: linear | cosine | step (p0 until guide_end, then 0)."""
    curriculum: str = "none"
    """Turn-depth curriculum: none, or tcod (a 0/1 gate by turn depth growing over training)."""
    tcod_order: str = "front_to_back"
    """tcod: front_to_back trains the first D turns, back_to_front the last D."""
    tcod_unit: str = "turns"
    """tcod: depth D counted in turns (capped by tcod_max_depth) or as a fraction of each trajectory."""
    tcod_start: float = 1.0
    """tcod: depth at step 0, in turns (unit turns, >= 1) or a fraction in (0, 1] (unit fraction)."""
    tcod_max_depth: int = 30
    """tcod, unit turns: the depth reached at tcod_full_at (the episode step cap covers everything)."""
    tcod_full_at: float = 0.7
    """tcod: training progress (step / train.steps) from which the whole trajectory is trained."""
    tcod_shape: str = "linear"
    """tcod: growth of the depth: linear (one more turn at even intervals) | cosine | step."""
    turn_weight: str = "none"
    """Extra turn weight: none, or tdur (atod's disagreement-uncertainty reweighting)."""
    atod_disagreement: float = 1.0
    """tdur: a_d in w = 1 + a_d D + a_h H; D = turn mean of max(0, 1 - p_T(y) / p_S(y))."""
    atod_uncertainty: float = 1.0
    """tdur: a_h in w = 1 + a_d D + a_h H; H = turn mean of 1 - p_S(y) (the student's tokens)."""
    atod_rl_max: float = 0.0
    """Weight of the RL term on the env reward reached at atod_rl_end (0: none; > 0 reads the env)."""
    atod_rl_start: float = 0.0
    """Training progress where the RL weight starts to rise from 0."""
    atod_rl_end: float = 1.0
    """Training progress where the RL weight reaches atod_rl_max."""
    atod_shape: str = "linear"
    """Rise of the RL weight: linear | cosine | step."""

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
        if not (0.0 <= self.guide_start < 1.0 and 0.0 < self.guide_end <= 1.0):
            raise ValueError(f"method {self.name!r}: guide_start must lie in [0, 1) and guide_end in (0, 1], "
                             f"not {self.guide_start} and {self.guide_end}")
        if self.guide_start > 0 and self.trajectory_source != "student":
            raise ValueError(f"method {self.name!r}: guidance (guide_start > 0) mixes teacher turns into the "
                             f"student's rollouts; it needs trajectory_source 'student', not {self.trajectory_source!r}")
        self._check_multiturn()

    def _check_multiturn(self) -> None:
        """The tcod / tdur / RL knobs: ranges, and on-policy trajectories (they read turn positions)."""
        unit_range = (1.0, float(self.tcod_max_depth)) if self.tcod_unit == "turns" else (1e-9, 1.0)
        bad = [f"{knob}={value}" for knob, value, ok in (
            ("tcod_max_depth", self.tcod_max_depth, self.tcod_max_depth >= 1),
            ("tcod_start", self.tcod_start, unit_range[0] <= self.tcod_start <= unit_range[1]),
            ("tcod_full_at", self.tcod_full_at, 0.0 <= self.tcod_full_at <= 1.0),
            ("atod_rl_max", self.atod_rl_max, 0.0 <= self.atod_rl_max <= 1.0),
            ("atod_rl_start", self.atod_rl_start, 0.0 <= self.atod_rl_start <= self.atod_rl_end <= 1.0),
            ("atod_disagreement", self.atod_disagreement, self.atod_disagreement >= 0),
            ("atod_uncertainty", self.atod_uncertainty, self.atod_uncertainty >= 0)) if not ok]  # fmt: skip
        if bad:
            raise ValueError(
                f"method {self.name!r}: {', '.join(bad)} out of range: tcod_start in [1, tcod_max_depth] "
                "turns (tcod_unit=turns) or (0, 1] (fraction); tcod_full_at, atod_rl_max in [0, 1]; "
                "0 <= atod_rl_start <= atod_rl_end <= 1; atod_disagreement, atod_uncertainty >= 0"
            )
        multiturn = self.curriculum != "none" or self.turn_weight != "none" or self.atod_rl_max > 0
        if multiturn and self.trajectory_source != "student":
            raise ValueError(f"method {self.name!r}: curriculum, turn_weight and the RL term read the "
                             f"student's own rollouts; trajectory_source must be 'student', not "
                             f"{self.trajectory_source!r}")

    @property
    def needs_judge(self) -> bool:
        """True when the teacher must label every turn Skip/Weak/Strong."""
        return self.gate == "judge"

    @property
    def verifier_free(self) -> bool:
        """False for the oracle gate and the RL term (atod): they read the environment's success."""
        return self.gate != "oracle" and not self.needs_reward

    @property
    def needs_reward(self) -> bool:
        """True when the loss has atod's RL term on the environment's reward (won)."""
        return self.atod_rl_max > 0

    @property
    def needs_teacher_logits(self) -> bool:
        """False for sft (nll): no teacher forward over the trajectories."""
        return self.estimator != "nll"

    def guide_p(self, step: int, total_steps: int) -> float:
        """The chance that the teacher acts on a turn of step `step`'s rollouts (0: on-policy)."""
        return curriculum_p(step, self.guide_start, self.guide_end * total_steps, self.guide_shape)

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
        """Raw detached weights w_B_T = g_t * c_t,j (0 outside responses), times tcod/tdur turn factors."""
        w_B_T = weighting.raw_weights_B_T(
            batch, gate=self.gate, judge_mode=self.judge_mode, alpha=self.alpha,
            confidence=self.confidence,
        )  # fmt: skip
        factor_U = self.turn_factor_U(batch)
        return w_B_T if factor_U is None else w_B_T * factor_U[batch.turn_ids_B_T.clamp(min=0)]

    def turn_factor_U(self, batch: MethodBatch) -> Tensor | None:
        """The tcod depth gate times the tdur weight per turn; None when both are off."""
        factor_U = None
        if self.curriculum == "tcod":
            factor_U = tcod.depth_gate_U(
                batch, order=self.tcod_order, unit=self.tcod_unit, start=self.tcod_start,
                max_depth=self.tcod_max_depth, full_at=self.tcod_full_at, shape=self.tcod_shape,
            )  # fmt: skip
        if self.turn_weight == "tdur":
            tdur_U = atod.tdur_U(batch, disagreement=self.atod_disagreement, uncertainty=self.atod_uncertainty)
            factor_U = tdur_U if factor_U is None else factor_U * tdur_U
        return factor_U

    def rl_weight(self, batch: MethodBatch) -> float:
        """atod's annealed weight lam of the RL term at the batch's training progress (0 without)."""
        if not self.needs_reward:
            return 0.0
        return atod.rl_weight(atod.step_progress(batch), rl_max=self.atod_rl_max,
                              start=self.atod_rl_start, end=self.atod_rl_end, shape=self.atod_shape)

    def totals(self, batches: Sequence[MethodBatch]) -> Totals:
        """Global N and sum w over every micro-batch of the optimizer step (all-reduced if DDP)."""
        totals = weighting.step_totals(batches, [self.weights(b) for b in batches], self.norm_scope)
        if self.needs_reward:
            totals.reward_mean = atod.reward_mean(batches)
        return totals

    def loss(self, batch: MethodBatch, totals: Totals) -> tuple[Tensor, dict[str, float]]:
        """This micro-batch's share of the step loss (to backward) and its stats."""
        w_raw_B_T = self.weights(batch)
        w_norm_B_T = weighting.normalized_weights_B_T(
            batch, w_raw_B_T, totals, self.normalize, self.norm_scope
        )
        loss = weighting.weighted_loss(batch, w_norm_B_T, totals)
        extra: dict[str, float] = {}
        if self.needs_reward:  # (1 - lam) OPD + lam RL, both over the step's global N
            lam, rl_loss = self.rl_weight(batch), atod.reinforce_loss(batch, totals)
            loss = (1.0 - lam) * loss + lam * rl_loss
            extra = {"rl_weight_mean": lam, "rl_loss": float(rl_loss.detach()),
                     "reward_baseline_mean": float(totals.reward_mean)}
        if self.curriculum == "tcod" and batch.num_turns:
            extra["tcod_covered_frac"] = float(tcod.depth_gate_U(
                batch, order=self.tcod_order, unit=self.tcod_unit, start=self.tcod_start,
                max_depth=self.tcod_max_depth, full_at=self.tcod_full_at, shape=self.tcod_shape,
            ).mean())  # fmt: skip
        return loss, batch_stats(batch, w_raw_B_T, w_norm_B_T, loss, totals) | extra
