"""Typed configuration (Hydra structured configs): a typo or a wrong type fails at start-up
with the field's name, and every field documents itself (`python -m harness --cfg job`)."""

from __future__ import annotations

import typing
import warnings
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from harness.agent.prompt import PromptSettings
from harness.agent.sampler import RolloutSettings
from harness.envs.generate import SuiteSpec
from harness.loop.judge import JudgeSettings
from harness.models import LoraSettings
from methods import Method


def schema_of(component: type, name: str, *, before: tuple = (), after: tuple = (), drop: tuple[str, ...] = (),
              optional: bool = False) -> type:
    """A Hydra structured config holding `component`'s own fields, types and defaults (tuples as
    lists), so each knob has one default: the component's. `optional`: every field defaults to None
    (= the component's default); `before`/`after`: config-only (name, type, default) fields."""
    hints = typing.get_type_hints(component)
    own = []
    for f in fields(component):
        if f.name in drop:
            continue
        default = None if optional else (f.default if f.default is not MISSING else f.default_factory())
        kind = _hydra_type(hints[f.name])
        own.append((f.name, typing.Optional[kind] if optional else kind, default))  # noqa: UP045 (a runtime type)
    specs = [(n, t, field(default_factory=lambda d=d: list(d)) if isinstance(d, (list, tuple)) else field(default=d))
             for n, t, d in (*before, *own, *after)]
    schema = make_dataclass(name, specs)
    schema.__module__ = __name__
    schema.__doc__ = f"The knobs of {component.__module__}.{component.__name__} (its docstrings say what each does)."
    return schema


def _hydra_type(kind: Any) -> Any:
    """OmegaConf has no tuples: tuple[str, ...] (or tuple[str, str, str]) becomes list[str]."""
    if typing.get_origin(kind) is tuple:
        return list[typing.get_args(kind)[0]]
    return kind


def build(component: type, node: Any, **given: Any) -> Any:
    """`component` from its config node: the node's values of the component's fields (lists as
    tuples; config-only keys left out), then `given`."""
    names = {f.name for f in fields(component)}
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in plain.items() if k in names}
    return component(**(values | given))


METHOD_DEFINING = ("trajectory_source", "gate", "normalize")
"""Knobs a method is made of (methods/): chosen by method=NAME, never overridden."""

MethodConfig = schema_of(Method, "MethodConfig", optional=True, drop=("name", *METHOD_DEFINING),
                         before=(("name", str, "sage"),),
                         after=(("sft_source", str, "teacher"),))  # sft only: teacher | expert trajectories
"""Which method (methods/ registry) and its knobs; null = the method's own default."""


SuiteConfig = schema_of(SuiteSpec, "SuiteConfig")
"""The generated offline suite (env=alfworld_synth; harness/envs/generate.py)."""


@dataclass
class EnvConfig:
    """Where the games come from and how they are played."""

    name: str = "alfworld_synth"  # alfworld_synth (generated, offline) | alfworld (a real download)
    data_root: str | None = None  # folder with json_2.1.1/; alfworld: default $ALFWORLD_DATA
    task_types: list[str] | None = None  # null = all six; names, short names (Pick2) or ids 1-6
    max_steps: int = 30  # step cap per episode
    num_workers: int | None = None  # env worker processes; null = one per usable core (or the Slurm allocation)
    fast_engine: bool = True  # exact engine speed-ups in the env workers (harness/envs/engine_cache.py)
    engine_disk_cache: bool = True  # with fast_engine: each game's Fast Downward translations and grammar
                                    # parse kept in <cache_dir>/engine for every later run (about 36 kB a game)
    on_malformed: str = "skip"  # skip (count) | error
    suite: SuiteConfig = field(default_factory=SuiteConfig)


@dataclass
class ModelEntry:
    """One model: a Hugging Face id, a local path, a preset, or '' for the tiny default."""

    path: str = ""
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16
    device: str = "auto"  # auto | cpu | cuda
    gguf_file: str | None = None


LoraConfig = schema_of(LoraSettings, "LoraConfig", before=(("enabled", bool, False),))
"""Optional LoRA on the student (peft; harness/models.py); enabled: whether to apply it."""


@dataclass
class TinyConfig:
    """Sizes and SFT budgets of the tiny default pair (model=tiny)."""

    teacher_layers: int = 4
    teacher_hidden: int = 256
    teacher_heads: int = 4  # attention heads (head dim = hidden / heads)
    student_layers: int = 4
    student_hidden: int = 128
    student_heads: int = 4
    teacher_sft_steps: int = 800
    renamed_copies: int = 1  # object-renamed copies of each teacher demonstration (harness/default/prepare.py)
    rename_lamps: bool = False  # the copies rename the lamps too (a lamp then stops being a lamp)
    student_sft_steps: int = 800
    # 48 demos x 150 steps won no game; 600 x 400 (session 3): 10% / 1.7% (60 games per split), and
    # every on-policy method took it to 0%; 2000 x 800 (default since session 5): 23.3% / 15.0%
    # (19.3% / 17.2% on the full evaluation; the teacher 52.1% / 44.0%)
    student_demos: int = 2000
    student_source: str = "expert"  # expert | teacher: the student's warm start on the final teacher's won greedy episodes
    sft_batch_size: int = 8  # sequences per SFT step (whole episodes in the full layout)
    sft_lr: float = 5e-4
    sft_bucket: int = 1  # >1: SFT batches cut from length-sorted windows of this many batches (less padding)
    counterfactuals: int = 0  # teacher SFT copies of search turns with the target put into / taken out of view
    # a curriculum stage before the teacher's SFT (harness/default/curriculum.py): one-message search
    # examples (the task + one observation -> take / go on); 0 steps and 0 mix = off
    curriculum_steps: int = 0
    curriculum_batch_size: int = 64
    curriculum_lr: float = 1e-3
    curriculum_edits: int = 8000  # counterfactual edits among its examples
    curriculum_mix: int = 0  # of its examples kept among the teacher's SFT data afterwards
    engine_corpus: bool = False  # the tokenizer's corpus also holds the engine's failure/idle texts (envs/corpus.py)
    judge_examples: int = 1500  # at most this many judge examples in the teacher's SFT data (0: no judge data)
    judge_games: int = 80  # train games played with noise to make them
    judge_heldout_games: int = 20  # the first train games, kept out, to report the judge's accuracy
    recovery_games: int = 200  # train games played by a noisy expert, labelled with its recovery (0: off)
    recovery_noise: float = 0.3  # chance per turn of an off-plan, invalid or repeated command there
    # DAgger after the teacher's SFT (harness/default/dagger.py): roll the teacher out on train games, label
    # every state with the exploring expert, fine-tune on demonstrations + corrections; 0 = off
    dagger_rounds: int = 0
    dagger_games: int = 200  # train games per round (greedy and at temperature 1 each)
    dagger_steps: int = 300  # SFT steps per round, continuing from the current teacher
    dagger_lr: float = 2e-4
    dagger_share: float = 0.5  # share of each SFT batch drawn from the corrections
    dagger_student_states: bool = False  # each round also labels the warm-start student's rollouts
    dagger_judge_turns: bool = False  # each round also makes judge examples of its labelled turns
    dagger_judge_per_episode: int = 4  # judge examples per labelled episode (with dagger_judge_turns)


@dataclass
class ModelConfig:
    name: str = "tiny"
    student: ModelEntry = field(default_factory=ModelEntry)
    teacher: ModelEntry = field(default_factory=ModelEntry)
    lora: LoraConfig = field(default_factory=LoraConfig)
    tiny: TinyConfig = field(default_factory=TinyConfig)


PromptConfig = schema_of(
    PromptSettings, "PromptConfig",
    before=(("layout", str, RolloutSettings.layout),),  # window (one datum per turn) | full (one per trajectory)
    after=(("max_new_tokens", int | None, None),))  # deprecated: rollout.max_new_tokens
"""What the agent sees each turn (harness/agent/prompt.py) and the chat layout."""

JudgeConfig = schema_of(JudgeSettings, "JudgeConfig", after=(("batch_size", int, 32),))  # judge prompts per forward
"""The teacher as turn judge (harness/loop/judge.py); template relative to conf/ or absolute."""

BACKENDS = ("hf",)
"""Generation backends of the rollout (harness/agent/sampler.py)."""

RolloutConfig = schema_of(
    RolloutSettings, "RolloutConfig", drop=("layout", "greedy", "max_turns", "max_batch_envs"),
    before=(("backend", str, "hf"),))  # hf (transformers generate); vllm is not supported here
"""How training rollouts are sampled (harness/agent/sampler.py); eval.* sets evaluation's sampling,
prompt.layout the layout and env.max_steps the turns."""


@dataclass
class TrainConfig:
    """The distillation loop (harness/loop/train.py)."""

    steps: int = 40
    envs_per_step: int = 16  # episodes rolled out per optimizer step
    micro_batch_size: int = 32  # data per forward/backward (gradient accumulation inside a step)
    lr: float = 1e-4
    schedule: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temperature: float | None = None  # deprecated: rollout.temperature
    top_p: float | None = None  # deprecated: rollout.top_p
    checkpoint_every: int = 10
    chunk_size: int = 1024  # positions per vocabulary chunk in scoring
    scoring_tokens: int | None = 2048  # positions (rows x longest) per model forward in scoring and judging:
                                       # rows grouped by length, no padding mask (scoring.context_hidden);
                                       # null: a whole micro-batch per forward
    stop_after: int | None = None  # stop (as if preempted) after this many steps; for tests
    max_turns: int | None = None  # training rollouts end after at most this many turns (null: env.max_steps);
                                  # evaluation always plays env.max_steps


@dataclass
class EvalConfig:
    """Evaluation on valid_seen / valid_unseen (harness/loop/evaluate.py)."""

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
class LoggerConfig:
    """An experiment tracker fed every metrics.jsonl line and the final success (harness/loop/loggers.py)."""

    name: str = "none"  # none | wandb | tensorboard (conf/logger/)
    mode: str = "offline"  # wandb: offline (no network; wandb sync later) | online | disabled
    project: str = "sage-opd"  # wandb project
    entity: str | None = None  # wandb entity (user or team); null = wandb's default
    run_name: str | None = None  # null = the run dir's name
    dir: str | None = None  # null = the run dir (wandb/ or tensorboard/ in it)


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
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def register_configs() -> None:
    """Make the schema known to Hydra (conf/config.yaml lists it first in its defaults)."""
    store = ConfigStore.instance()
    store.store(name="schema", node=Config)


def to_plain(cfg: Any) -> dict:
    """An OmegaConf config (or dataclass) -> a plain, JSON-ready dict."""
    return OmegaConf.to_container(OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg, resolve=True)


RENAMED = {"prompt.max_new_tokens": "rollout.max_new_tokens", "train.temperature": "rollout.temperature",
           "train.top_p": "rollout.top_p"}
"""Deprecated key -> its new key; the old names work (with a warning) until the next release."""


def apply_renamed(cfg: Any, log=print) -> None:
    """Move values set under a deprecated name (RENAMED) to the new key, saying so. The old name
    wins, as an override of it did before (a model or experiment file may set the new key).
    The old key is then null (config.json keeps the new one)."""
    for old, new in RENAMED.items():
        value = OmegaConf.select(cfg, old)
        if value is None:
            continue
        message = (f"{old} is deprecated and will be removed in the next release: use {new}={value} "
                   f"(it replaces {new}={OmegaConf.select(cfg, new)})")
        warnings.warn(message, FutureWarning, stacklevel=2)
        log(f"warning: {message}")
        OmegaConf.update(cfg, new, value)
        OmegaConf.update(cfg, old, None)


def renamed_record(config: dict) -> dict:
    """A run record's config (config.json) under today's names: RENAMED keys moved, nulls dropped."""
    config = {k: dict(v) if isinstance(v, dict) else v for k, v in config.items()}
    for old, new in RENAMED.items():
        (old_group, old_key), (new_group, new_key) = old.split("."), new.split(".")
        value = config.get(old_group, {}).pop(old_key, None)
        if value is not None:
            config.setdefault(new_group, {}).setdefault(new_key, value)
    return config


def rollout_settings(cfg: Any, evaluation: bool = False) -> RolloutSettings:
    """The one place RolloutSettings is built: training rollouts (rollout.*), or with `evaluation`
    the eval.* sampling (greedy, temperature, top_p); layout and turns from prompt.* and env.*."""
    backend = cfg.rollout.backend
    if backend == "vllm":
        raise ValueError("rollout.backend=vllm: vllm is not installed and not supported by this harness yet; "
                         "use rollout.backend=hf (transformers generate)")
    if backend not in BACKENDS:
        raise ValueError(f"rollout.backend must be one of {BACKENDS}, not {backend!r}")
    sampling = {"greedy": cfg.eval.greedy, "temperature": cfg.eval.temperature, "top_p": cfg.eval.top_p}
    max_turns = cfg.env.max_steps
    train_turns = cfg.train.max_turns
    if not evaluation and train_turns is not None:
        if train_turns < 1:
            raise ValueError(f"train.max_turns must be >= 1 (or null: env.max_steps), got {train_turns}")
        max_turns = min(train_turns, cfg.env.max_steps)
    return build(RolloutSettings, cfg.rollout, layout=cfg.prompt.layout, max_turns=max_turns,
                 **(sampling if evaluation else {}))
