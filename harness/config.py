"""Typed configuration (Hydra structured configs): a typo or a wrong type fails at start-up
with the field's name, and every field documents itself (`python -m harness --cfg job`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class MethodConfig:
    """Which method, and its knobs (sage_opd.md). null = the method's own default."""

    name: str = "sage"
    estimator: str | None = None  # full_kl | sampled | jsd
    judge_mode: str | None = None  # argmax | expected
    alpha: float | None = None  # gate weight of a Weak turn
    confidence: str | None = None  # token | turn | none
    norm_scope: str | None = None  # batch | sequence
    beta: float | None = None  # jsd: 0 forward KL, 1 reverse KL
    clip_eps: float | None = None  # PPO clip of the sampled estimator
    temperature: float | None = None  # teacher temperature
    sft_source: str = "teacher"  # sft only: teacher | expert trajectories


@dataclass
class SuiteConfig:
    """The generated offline suite (env=alfworld_synth)."""

    seed: int = 0
    n_train: int = 2000  # the tiny teacher needs many demonstrations (the real benchmark has 3,553)
    n_valid_seen: int = 140
    n_valid_unseen: int = 134
    receptacles_per_room: int = 8
    distractors: int = 4


@dataclass
class EnvConfig:
    """Where the games come from and how they are played."""

    name: str = "alfworld_synth"  # alfworld_synth (generated, offline) | alfworld (a real download)
    data_root: str | None = None  # folder with json_2.1.1/; alfworld: default $ALFWORLD_DATA
    task_types: list[str] | None = None  # null = all six; names, short names (Pick2) or ids 1-6
    max_steps: int = 30  # step cap per episode
    num_workers: int = 2  # env worker processes
    on_malformed: str = "skip"  # skip (count) | error
    suite: SuiteConfig = field(default_factory=SuiteConfig)


@dataclass
class ModelEntry:
    """One model: a Hugging Face id, a local path, a preset, or '' for the tiny default."""

    path: str = ""
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16
    device: str = "auto"  # auto | cpu | cuda
    gguf_file: str | None = None


@dataclass
class LoraConfig:
    """Optional LoRA on the student (peft)."""

    enabled: bool = False
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class TinyConfig:
    """Sizes and SFT budgets of the tiny default pair (model=tiny)."""

    teacher_layers: int = 4
    teacher_hidden: int = 256
    student_layers: int = 4
    student_hidden: int = 128
    teacher_sft_steps: int = 800
    renamed_copies: int = 1  # object-renamed copies of each teacher demonstration (harness/prepare.py)
    rename_lamps: bool = False  # the copies rename the lamps too (a lamp then stops being a lamp)
    student_sft_steps: int = 800
    # 48 demos x 150 steps won no game; 600 x 400 (session 3): 10% / 1.7% (60 games per split), and
    # every on-policy method took it to 0%; 2000 x 800 (default since session 5): 23.3% / 15.0%
    # (19.3% / 17.2% on the full evaluation; the teacher 52.1% / 44.0%)
    student_demos: int = 2000
    sft_batch_size: int = 8  # sequences per SFT step (whole episodes in the full layout)
    sft_lr: float = 5e-4
    judge_examples: int = 1500  # at most this many judge examples in the teacher's SFT data (0: no judge data)
    judge_games: int = 80  # train games played with noise to make them
    judge_heldout_games: int = 20  # the first train games, kept out, to report the judge's accuracy
    recovery_games: int = 200  # train games played by a noisy expert, labelled with its recovery (0: off)
    recovery_noise: float = 0.3  # chance per turn of an off-plan, invalid or repeated command there


@dataclass
class ModelConfig:
    name: str = "tiny"
    student: ModelEntry = field(default_factory=ModelEntry)
    teacher: ModelEntry = field(default_factory=ModelEntry)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)


@dataclass
class PromptConfig:
    """What the agent sees each turn (harness/agent/prompt.py)."""

    layout: str = "window"  # window (one datum per turn) | full (one datum per trajectory)
    history: int = 2  # past (observation, action) pairs in the window; -1 = all
    show_admissible: bool = True
    answer_format: str = "action"  # action (tiny) | think_action (<think>/<action> for LLMs)
    drop_help: bool = True
    system_prompt: str | None = None
    max_new_tokens: int = 24


@dataclass
class JudgeConfig:
    """The teacher as turn judge (harness/judge.py)."""

    template: str = "judge/default.txt"  # relative to conf/, or an absolute path
    history: int = 2
    labels: list[str] = field(default_factory=lambda: ["Skip", "Weak", "Strong"])
    batch_size: int = 32


@dataclass
class TrainConfig:
    """The distillation loop (harness/train.py)."""

    steps: int = 40
    envs_per_step: int = 16  # episodes rolled out per optimizer step
    micro_batch_size: int = 32  # data per forward/backward (gradient accumulation inside a step)
    lr: float = 1e-4
    schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float = 1.0  # sampling temperature of training rollouts
    top_p: float = 1.0
    checkpoint_every: int = 10
    chunk_size: int = 1024  # positions per vocabulary chunk in scoring
    stop_after: int | None = None  # stop (as if preempted) after this many steps; for tests


@dataclass
class EvalConfig:
    """Evaluation on valid_seen / valid_unseen (harness/evaluate.py)."""

    splits: list[str] = field(default_factory=lambda: ["valid_seen", "valid_unseen"])
    max_games: int | None = None  # per split; null = all (140 / 134 on the real benchmark)
    seeds: list[int] = field(default_factory=lambda: [0])
    greedy: bool = True
    temperature: float = 0.4  # when greedy is false
    top_p: float = 1.0
    batch_envs: int = 64
    eval_teacher: bool = False  # also evaluate the teacher (reference row)
    eval_initial: bool = False  # also evaluate the student before training


@dataclass
class Config:
    """One run: python -m harness method=sage seed=0 ..."""

    seed: int = 0
    mode: str = "train"  # train (then evaluate) | eval (a checkpoint) | prepare (games + tiny models only)
    experiment: str = "default"
    checkpoint: str | None = None  # mode=eval: a run dir or a saved model dir; null = the initial student
    cache_dir: str | None = None  # games and tiny models; default $SAGE_OPD_CACHE or ~/.cache/sage-opd
    method: MethodConfig = field(default_factory=MethodConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def register_configs() -> None:
    """Make the schema known to Hydra (conf/config.yaml lists it first in its defaults)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)


def to_plain(cfg: Any) -> dict:
    """An OmegaConf config (or dataclass) -> a plain, JSON-ready dict."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg, resolve=True)
