"""One run end to end: prepare (games, models) -> train -> evaluate -> result.json.

`harness/__main__.py` hands the Hydra config here; tests call `run(cfg, run_dir)` directly.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from functools import partial
from pathlib import Path

import torch

import methods
from harness import models as model_io
from harness.agent.prompt import PromptSettings
from harness.cache import cache_root
from harness.config import (
    LoggerConfig,
    apply_renamed,
    build,
    renamed_record,
    rollout_settings,
    to_plain,
)
from harness.envs import EnvPool, get_environment
from harness.loop.loggers import make_logger
from harness.loop.results import versions, write_json, write_result
from harness.loop.train import Models, check_sampling, train

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def prompt_settings(cfg) -> PromptSettings:
    return build(PromptSettings, cfg.prompt)


def data_root(cfg) -> tuple[Path, str | None]:
    """The games: the generated suite (built once, cached) or a real download."""
    if cfg.env.name == "alfworld_synth" and not cfg.env.data_root:
        from harness.envs.generate import SuiteSpec, ensure_suite

        spec = SuiteSpec(**dict(cfg.env.suite))
        root = ensure_suite(spec, cache_root=cache_root(cfg.cache_dir))  # locked per suite in there
        return root, json.loads((root / "suite.json").read_text()).get("hash")
    return get_environment(cfg.env.name).resolve_data_root(cfg.env.data_root), None


def tiny_pair_suite(cfg, root: Path, log=print) -> Path:
    """The train suite the tiny pair is built from: the run's games, except under mode=eval, where
    it is the checkpoint run's train suite (its config.json) or the generated suite env.suite, so
    evaluating on another data root reuses that pair instead of building one for the eval data."""
    if cfg.mode != "eval":
        return root
    trained = Path(cfg.checkpoint) / "config.json" if cfg.checkpoint else None
    env = json.loads(trained.read_text()).get("env", {}) if trained and trained.is_file() else {}
    if env.get("data_root"):
        suite = get_environment(env.get("name", cfg.env.name)).resolve_data_root(env["data_root"])
    else:
        from harness.envs.generate import SuiteSpec, ensure_suite

        spec = SuiteSpec(**{**dict(cfg.env.suite), **env.get("suite", {})})
        suite = ensure_suite(spec, cache_root=cache_root(cfg.cache_dir))
    if suite.resolve() != root.resolve():
        log(f"mode=eval on {root}: the tiny pair of its train suite {suite} (set model.student.path and "
            "model.teacher.path to evaluate other models)")
    return suite


def discover_splits(cfg, root: Path, log=print) -> tuple[list, dict[str, dict[str, int]]]:
    """The train games (mode=train) and {split: {reason: count}} of the trial folders skipped in
    every split the run reads, each split logged in one line: no game disappears silently."""
    environment = get_environment(cfg.env.name)
    splits = ["train"] if cfg.mode == "train" else []
    found = {split: environment.discover(root, split, cfg.env.task_types, cfg.env.on_malformed)
             for split in splits + list(cfg.eval.splits)}
    for split, games in found.items():
        log(games.summary(split))
    return found["train"].games if "train" in found else [], {s: g.skip_counts() for s, g in found.items()}


def judge_settings(cfg):
    from harness.loop.judge import JudgeSettings

    template = Path(cfg.judge.template)
    if not template.is_absolute():
        template = CONF_DIR / template
    return build(JudgeSettings, cfg.judge, template=str(template))


def tiny_settings(cfg):
    """The tiny pair's build settings (harness/default/prepare.py) from `model.tiny` and the prompt."""
    from harness.default.curriculum import CurriculumSettings
    from harness.default.dagger import DaggerSettings
    from harness.default.prepare import TinySettings
    from harness.default.sft import SFTSettings
    from harness.default.tiny import TinyModelSpec

    t = cfg.model.tiny
    return TinySettings(
        teacher=TinyModelSpec(layers=t.teacher_layers, hidden=t.teacher_hidden, heads=t.teacher_heads,
                              kv_heads=t.teacher_heads, intermediate=4 * t.teacher_hidden),
        student=TinyModelSpec(layers=t.student_layers, hidden=t.student_hidden, heads=t.student_heads,
                              kv_heads=t.student_heads, intermediate=4 * t.student_hidden),
        teacher_sft=SFTSettings(steps=t.teacher_sft_steps, batch_size=t.sft_batch_size, lr=t.sft_lr,
                                bucket=t.sft_bucket),
        student_sft=SFTSettings(steps=t.student_sft_steps, batch_size=t.sft_batch_size, lr=t.sft_lr, warmup_steps=20,
                                bucket=t.sft_bucket),
        student_demos=t.student_demos, student_source=t.student_source, layout=cfg.prompt.layout, renamed_copies=t.renamed_copies,
        rename_lamps=t.rename_lamps, engine_corpus=t.engine_corpus, counterfactuals=t.counterfactuals, seed=0,
        curriculum=CurriculumSettings(steps=t.curriculum_steps, batch_size=t.curriculum_batch_size, lr=t.curriculum_lr,
                                      edits=t.curriculum_edits, mix=t.curriculum_mix),
        dagger=DaggerSettings(rounds=t.dagger_rounds, games=t.dagger_games, steps=t.dagger_steps, lr=t.dagger_lr,
                              dagger_share=t.dagger_share, student_states=t.dagger_student_states,
                              judge_turns=t.dagger_judge_turns, judge_per_episode=t.dagger_judge_per_episode))


def load_models(cfg, root: Path, log=print) -> tuple[Models, dict]:
    """Student and teacher (the tiny pair is prepared once and cached), checked for compatibility."""
    info: dict = {}
    student_path, teacher_path = cfg.model.student.path, cfg.model.teacher.path
    if cfg.model.name == "tiny" and not (student_path and teacher_path):
        root = tiny_pair_suite(cfg, root, log)
        from harness.default.prepare import prepare_tiny

        t = cfg.model.tiny
        settings = tiny_settings(cfg)
        extras, keys, words, report, dagger_judge = [], [], (), None, None
        if t.judge_examples > 0:  # judge examples join the teacher's SFT data (cpu_benchmark.md)
            from harness.default.judge_data import (
                JudgeDataSettings,
                heldout_judge_examples,
                judge_accuracy,
                judge_data_key,
                judge_teacher_data,
            )
            from harness.loop.judge import judge_vocabulary

            js = judge_settings(cfg)
            data = JudgeDataSettings(num_games=t.judge_games, heldout_games=t.judge_heldout_games,
                                     max_examples=t.judge_examples)
            extras.append(partial(judge_teacher_data, root, settings=js, data=data))
            keys.append(judge_data_key(js, data))
            words = tuple(judge_vocabulary(js))

            def report(teacher, tokenizer):
                return judge_accuracy(teacher, tokenizer, heldout_judge_examples(root, tokenizer, js, data), js)

            def dagger_judge(tokenizer, episodes, turns):  # judge examples of DAgger episodes' turns
                from harness.default.judge_data import policy_judge_examples
                from harness.default.sft import labelled_data

                messages, labels = policy_judge_examples(episodes, tokenizer, js, turns)
                return labelled_data(messages, [js.labels[label] for label in labels], tokenizer)

        if t.recovery_games > 0:  # DAgger-style: recover from the student's kind of mistakes
            from harness.default.judge_data import JudgeDataSettings, recovery_teacher_data

            noise = JudgeDataSettings(num_games=t.recovery_games, weak_prob=t.recovery_noise / 2,
                                      strong_prob=t.recovery_noise / 2, seed=11)
            # after the first train games, held out for the accuracy reports
            extras.append(partial(recovery_teacher_data, root, prompt=prompt_settings(cfg), data=noise,
                                  first_game=t.judge_heldout_games, layout=cfg.prompt.layout))
            keys.append(f"recovery-v2-{t.recovery_games}-{t.recovery_noise}")

        def extra(tokenizer, episodes):
            return [d for make in extras for d in make(tokenizer, episodes)]

        extra_key = "|".join(keys)
        pair = prepare_tiny(root, settings, prompt_settings(cfg), cache_root=cache_root(cfg.cache_dir) / "tiny",
                            extra_teacher_data=extra if extras else None, extra_key=extra_key, extra_words=words,
                            teacher_report=report, log=log, device=cfg.model.teacher.device,
                            dagger_judge_data=dagger_judge)
        student_path, teacher_path = student_path or str(pair.student), teacher_path or str(pair.teacher)
        info["tiny_report"] = pair.report
        info["tiny_keys"] = [pair.teacher.parent.name, pair.root.name]  # cache entries (harness/cache.py)
    if not student_path or not teacher_path:
        raise ValueError("model.student.path and model.teacher.path must be set unless model=tiny "
                         "(a Hugging Face id, a local directory, or a preset such as smollm2-135m-instruct).")
    s, te = cfg.model.student, cfg.model.teacher
    student = model_io.load_model(student_path, dtype=s.dtype, device=s.device, gguf_file=s.gguf_file)
    teacher = model_io.load_model(teacher_path, dtype=te.dtype, device=te.device, gguf_file=te.gguf_file)
    tokenizer = model_io.load_tokenizer(student_path, gguf_file=s.gguf_file)
    teacher_tokenizer = model_io.load_tokenizer(teacher_path, gguf_file=te.gguf_file)
    keep = model_io.check_compatible(tokenizer, teacher_tokenizer, student.get_output_embeddings().weight.shape[0],
                                     teacher.get_output_embeddings().weight.shape[0],
                                     student_name=student_path, teacher_name=teacher_path)
    teacher.eval().requires_grad_(False)
    if cfg.model.lora.enabled:
        student = model_io.apply_lora(student, build(model_io.LoraSettings, cfg.model.lora))
    info |= {"student": student_path, "teacher": teacher_path, "keep_vocab": keep}
    return Models(student, teacher, tokenizer, keep), info


def make_judge(cfg):
    """judge(teacher, tokenizer, trajectories) -> ({(traj, turn): probs_3}, {(traj, turn): valid})."""
    from harness.loop.judge import judge_turns

    settings = judge_settings(cfg)

    def judge(teacher, tokenizer, trajectories):
        result = judge_turns(teacher, tokenizer, trajectories, settings, batch_size=cfg.judge.batch_size,
                             group_tokens=cfg.train.scoring_tokens)
        keys = [tuple(k) for k in result.turn_keys]
        return ({k: result.probs_U_3[i] for i, k in enumerate(keys)},
                {k: bool(result.valid_U[i]) for i, k in enumerate(keys)})

    return judge


def run(cfg, run_dir: str | os.PathLike, log=print) -> dict:
    """Train and/or evaluate as `cfg.mode` says; always leaves result.json (complete or failed)."""
    from transformers.utils import logging as hf_logging

    from harness.loop.evaluate import evaluate

    hf_logging.disable_progress_bar()  # one tqdm bar per run (the training loop's), not one per save/load
    started = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    apply_renamed(cfg, log)  # prompt.max_new_tokens, train.temperature/top_p -> rollout.*
    config = to_plain(cfg)
    finished = _finished(run_dir, config)
    if finished is not None:  # a requeued or repeated job: the result stands, nothing is redone
        log(f"{run_dir} already holds a complete result; not redoing it")
        return finished
    _check_resumable(run_dir, config)
    write_json(run_dir / "config.json", config)
    torch.manual_seed(cfg.seed)
    suite_hash = None
    method = logger = None
    try:
        logger = make_logger(cfg.logger, run_dir, config)  # a missing package fails here, before any work
        method = methods.get(cfg.method.name, **_method_knobs(cfg))
        rollout_settings(cfg)  # a bad rollout.* (backend=vllm, temperature 0) fails here, before any work
        if cfg.train.scoring_tokens is not None and cfg.train.scoring_tokens < 1:
            raise ValueError(f"train.scoring_tokens must be >= 1 (positions per model forward in scoring) or null "
                             f"(a whole micro-batch per forward), got {cfg.train.scoring_tokens}")
        if cfg.mode == "train":
            check_sampling(method, cfg.rollout)
        root, suite_hash = data_root(cfg)
        games, skipped = discover_splits(cfg, root, log) if cfg.mode != "prepare" else ([], {})
        models, info = load_models(cfg, root, log)
        if method.needs_judge and cfg.mode != "eval":  # at start-up, not after the first rollout
            from harness.loop.judge import check_label_tokens

            check_label_tokens(models.tokenizer, judge_settings(cfg))
        if cfg.mode == "prepare":
            log(f"prepared: games at {root}; student {info['student']}; teacher {info['teacher']}")
            return {"status": "prepared", **info}
        prompt = prompt_settings(cfg)
        with EnvPool(num_workers=cfg.env.num_workers, max_steps=cfg.env.max_steps, environment=cfg.env.name,
                     with_plan=method.gate == "oracle", fast_engine=cfg.env.fast_engine,
                     engine_cache_dir=cache_root(cfg.cache_dir) / "engine" if cfg.env.engine_disk_cache else None) as pool:
            extra: dict = {"models": info, "games_skipped": skipped}
            if cfg.eval.eval_teacher:
                extra["teacher_eval"] = evaluate(models.teacher, models.tokenizer, root, cfg, pool, prompt, log,
                                                 run_dir / "eval_teacher_episodes.jsonl")
            if cfg.eval.eval_initial:
                extra["initial_eval"] = evaluate(models.student, models.tokenizer, root, cfg, pool, prompt, log,
                                                 run_dir / "eval_initial_episodes.jsonl")
            if cfg.mode == "train":
                done = train(cfg, run_dir, models, method, games, pool,
                             judge=make_judge(cfg) if method.needs_judge else None, prompt=prompt, logger=logger)
                if done < cfg.train.steps:
                    log(f"stopped after step {done} of {cfg.train.steps} (train.stop_after); rerun to resume")
                    return {"status": "stopped", "step": done}
            elif cfg.mode == "eval" and cfg.checkpoint:
                _load_for_eval(models, cfg.checkpoint)
            elif cfg.mode not in ("eval",):
                raise ValueError(f"mode must be train, eval or prepare, not {cfg.mode!r}")
            evaluation = evaluate(models.student, models.tokenizer, root, cfg, pool, prompt, log,
                                  run_dir / "eval_episodes.jsonl")
        # mode=eval without a checkpoint evaluates the untrained (warm-start) student: say so
        evaluated = "warm_start" if cfg.mode == "eval" and not cfg.checkpoint else method.name
        write_result(run_dir, status="complete", method=evaluated, seed=cfg.seed, verifier_free=method.verifier_free,
                     config=config, versions_=versions(suite_hash), evaluation=evaluation,
                     wall_time_s=time.perf_counter() - started, extra=extra)
        result = json.loads((run_dir / "result.json").read_text())
        logger.log_final(result)
        return result
    except Exception as err:
        write_result(run_dir, status="failed", method=cfg.method.name, seed=cfg.seed,
                     verifier_free=method.verifier_free if method else True, config=config,
                     versions_=versions(suite_hash), evaluation=None, wall_time_s=time.perf_counter() - started,
                     error=f"{type(err).__name__}: {err}", extra={"traceback": traceback.format_exc()})
        raise
    finally:
        if logger is not None:
            logger.close()


def _finished(run_dir: Path, config: dict) -> dict | None:
    """The complete result of this very config in run_dir, if there is one."""
    path = run_dir / "result.json"
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    same = isinstance(record.get("config"), dict) and not config_changes(record["config"], config)
    return record if record.get("status") == "complete" and same else None


RESULT_NEUTRAL = ("train.stop_after", "env.num_workers", "env.fast_engine", "env.suite.num_workers", *(f"logger.{k}" for k in LoggerConfig.__dataclass_fields__))
"""Config keys that do not change a run's result: a finished run stands and a checkpoint
resumes when only these differ (env workers only spread the same games over processes; a
logger only copies the run record)."""


def config_changes(old: dict, new: dict) -> list[str]:
    """The keys (dotted) in which `new` makes another run than `old`. Not counted: the
    RESULT_NEUTRAL keys, and keys that `old` lacks (added to the schema after it was written)
    while `new` holds their schema default, so adding a knob does not orphan finished runs."""
    from harness.config import Config, to_plain

    old, new = _flat(renamed_record(old)), _flat(renamed_record(json.loads(json.dumps(new, default=str))))
    defaults = _flat(renamed_record(to_plain(Config)))
    missing = object()
    return sorted(k for k in old.keys() | new.keys()
                  if k not in RESULT_NEUTRAL and old.get(k, missing) != new.get(k, missing)
                  and not (k not in old and k in defaults and new.get(k) == defaults[k]))


def _flat(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _check_resumable(run_dir: Path, config: dict) -> None:
    """A run dir holding a checkpoint resumes only under the config that made it: otherwise a
    changed default (a new tiny pair, another lr) would silently continue an old run."""
    from harness.loop import checkpoint

    previous = run_dir / "config.json"
    if not previous.exists() or not (run_dir / "checkpoints" / "latest").exists():
        return
    old_config = json.loads(previous.read_text())
    changed = config_changes(old_config, config)
    if changed:
        old, new = _flat(old_config), _flat(json.loads(json.dumps(config, default=str)))
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise ValueError(f"{run_dir} holds a checkpoint ({checkpoint.latest(run_dir).name}) of a run with another "
                         f"config ({len(changed)} keys differ: {shown}). Resuming would mix the two: "
                         f"use another run dir, or delete {run_dir} to start over.")


def _method_knobs(cfg) -> dict:
    knobs = {k: v for k, v in dict(cfg.method).items() if k not in ("name", "sft_source") and v is not None}
    if cfg.method.name == "sft":
        knobs["sft_source"] = cfg.method.sft_source
    return knobs


def _load_for_eval(models: Models, checkpoint: str) -> None:
    """mode=eval: a run dir (its latest checkpoint) or a saved model dir."""
    from harness.loop import checkpoint as ckpt

    path = Path(checkpoint)
    found = ckpt.latest(path) if (path / "checkpoints").exists() else None
    if found is not None:
        ckpt.load_weights_into(models.student, found)
    elif (path / "config.json").exists() or (path / "adapter_config.json").exists():
        ckpt.load_weights_into(models.student, path.parent if path.name == "model" else path)
    else:
        raise FileNotFoundError(f"checkpoint={checkpoint!r} is neither a run dir with checkpoints/ nor a saved model dir")
