"""The prepare stage: make the tiny teacher and student of the embedded default, once.

Teacher: SFT on exploring-expert demonstrations of the train games until competent (plus any
extra examples, e.g. judge examples, passed in by the caller). Student: smaller, warm-started
by a short SFT on a few demonstrations, so it starts clearly weaker. Both are cached under a
hash of everything that made them; a file lock makes concurrent jobs (a Slurm array starting
at once) wait for one builder instead of racing, and the result is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from harness import cache
from harness.agent.prompt import PromptSettings
from harness.default.curriculum import CurriculumSettings, heldout_report
from harness.default.dagger import DaggerSettings
from harness.default.sft import SFTSettings, action_accuracy, demo_data, train_sft
from harness.default.tiny import (
    STUDENT_SPEC,
    TEACHER_SPEC,
    TinyModelSpec,
    build_tiny_model,
    build_tokenizer,
    save_tiny,
)
from harness.envs import EnvPool, discover_games, interleave_task_types
from harness.envs.demos import load_jsonl, play_experts, save_jsonl

PREPARE_VERSION = "3"  # 3: explorer walks the room listing; demos interleave task types


@dataclass
class TinySettings:
    """How the tiny pair is made (every field is a knob and part of the cache key)."""

    teacher: TinyModelSpec = TEACHER_SPEC
    student: TinyModelSpec = STUDENT_SPEC
    teacher_sft: SFTSettings = field(default_factory=lambda: SFTSettings(steps=700, batch_size=16, lr=5e-4))
    student_sft: SFTSettings = field(default_factory=lambda: SFTSettings(steps=150, batch_size=16, lr=5e-4, warmup_steps=20))
    student_demos: int = 24
    """Demonstration episodes the student is warm-started on (the teacher gets every train game)."""
    student_source: str = "expert"
    """Whose episodes warm-start the student: 'expert' (the exploring expert's demonstrations) or
    'teacher' (the final teacher's own greedy episodes on the same `student_demos` train games, the
    won ones: the teacher's skills are then a superset of the student's, and the student visits
    the states the teacher knows). 'teacher' makes the student a stage after the teacher."""
    heldout_demos: int = 20
    """Train episodes held out of the teacher's SFT to report its next-action accuracy per verb."""
    layout: str = "window"
    renamed_copies: int = 1
    """Copies of every teacher demonstration with the object names permuted and their numbers
    renumbered, consistently within the episode: the teacher must then read which object the
    task names and which number it has in view, instead of memorizing object/place pairs."""
    rename_lamps: bool = False
    """Whether the copies also rename the lamps (`use X`): off, a lamp stays a lamp."""
    dagger: DaggerSettings = field(default_factory=DaggerSettings)
    """DAgger rounds after the teacher's SFT: a cache stage of its own (harness/default/dagger.py)."""
    max_new_tokens: int = 12
    """Reply cap of the teacher's DAgger rollouts (prompt.max_new_tokens of the runs)."""
    counterfactuals: int = 0
    """Counterfactual copies of search turns in the teacher's SFT data (harness/default/counterfactual.py):
    a demonstration's prefix with the target put into or taken out of the list in view, labelled
    by the expert (0: none)."""
    curriculum: CurriculumSettings = field(default_factory=CurriculumSettings)
    """One-message search examples before (and optionally among) the teacher's SFT data
    (harness/default/curriculum.py); inactive (steps = mix = 0) as shipped."""
    engine_corpus: bool = False
    """The tokenizer's corpus also holds what the engine prints to failing and idle commands
    (harness/envs/corpus.py); off, "Nothing happens." tokenizes as `nothing <unk> .`."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.student_source not in ("expert", "teacher"):
            raise ValueError(f"model.tiny.student_source must be 'expert' or 'teacher', not {self.student_source!r}")


@dataclass
class TinyPair:
    """Where the prepared models are, and what was measured while making them."""

    root: Path
    teacher: Path
    student: Path
    report: dict


def _suite_id(suite_root: Path) -> str:
    """The generated suite's hash; for other game folders (a real download), a hash of the path."""
    summary = suite_root / "suite.json"
    if summary.exists() and "hash" in (data := json.loads(summary.read_text())):
        return data["hash"]
    return hashlib.sha256(str(suite_root.resolve()).encode()).hexdigest()[:16]


STUDENT_FIELDS = ("student", "student_sft", "student_demos", "student_source")
DAGGER_FIELDS = ("dagger", "max_new_tokens")  # a stage after the base teacher: not in its key


def _hash(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Knobs added after pairs were built and shipped, at the value that reproduces those builds: left
# out of the keys at that value, so adding a knob never orphans a cache or shipped entry.
LEGACY_DEFAULTS = {"engine_corpus": False, "student_source": "expert", "counterfactuals": 0}
LEGACY_SFT_DEFAULTS = {"bucket": 1}
LEGACY_PROMPT_DEFAULTS = {"admissible_scope": "all"}
RESULT_NEUTRAL_SFT = ("checkpoint_every",)  # how often a build saves; not what it makes


def _key_view(settings: TinySettings) -> dict:
    """asdict(settings) as keys see it: legacy-default knobs and result-neutral ones left out."""
    view = {k: v for k, v in asdict(settings).items() if not (k in LEGACY_DEFAULTS and v == LEGACY_DEFAULTS[k])}
    if not settings.curriculum.active:
        view.pop("curriculum")  # no stage: the builds made before the knob
    for name in ("teacher_sft", "student_sft"):
        view[name] = {k: v for k, v in view[name].items() if k not in RESULT_NEUTRAL_SFT
                      and not (k in LEGACY_SFT_DEFAULTS and v == LEGACY_SFT_DEFAULTS[k])}
    return view


def _cache_key(suite_root: Path, settings: TinySettings, prompt: PromptSettings, extra_key: str) -> str:
    """The teacher's key: everything that made it (the student's fields excluded)."""
    teacher = {k: v for k, v in _key_view(settings).items() if k not in STUDENT_FIELDS + DAGGER_FIELDS}
    return _hash({"v": PREPARE_VERSION, "suite": _suite_id(suite_root), "settings": teacher,
                  "prompt": {k: v for k, v in asdict(prompt).items()
                             if not (k in LEGACY_PROMPT_DEFAULTS and v == LEGACY_PROMPT_DEFAULTS[k])},
                  "extra": extra_key})


def _dagger_key(teacher_key: str, settings: TinySettings) -> str:
    """The key of the DAgger stage after `settings.dagger.rounds` rounds: the base teacher's key
    and the DAgger knobs (a knob added later is left out at its legacy value)."""
    view = {k: v for k, v in asdict(settings).items() if k in DAGGER_FIELDS}
    view["dagger"] = {k: v for k, v in view["dagger"].items()
                      if not (k in LEGACY_DAGGER_DEFAULTS and v == LEGACY_DAGGER_DEFAULTS[k])}
    if not view["dagger"].get("judge_turns"):
        view["dagger"].pop("judge_per_episode", None)  # read only with judge_turns
    return _hash({"v": PREPARE_VERSION, "stage": DAGGER_STAGE_VERSION, "teacher": teacher_key, "dagger": view})


def _student_key(teacher_key: str, settings: TinySettings) -> str:
    """The student's key: its teacher's key (the tokenizer and demonstrations) and its own fields."""
    return _hash({"v": PREPARE_VERSION, "teacher": teacher_key,
                  "student": {k: v for k, v in _key_view(settings).items() if k in STUDENT_FIELDS}})


def _expert_student_key(teacher_key: str, settings: TinySettings) -> str:
    """The key of the student SFT'd on the expert's demonstrations (the warm start, or the student
    DAgger rolls out with `dagger.student_states`): never read from `student_source`, so a
    teacher-sourced build reuses the cached or shipped expert student instead of building it again."""
    return _student_key(teacher_key, replace(settings, student_source="expert"))


def engine_corpus(suite_root: Path, games: int = 60, steps: int = 25) -> list[str]:
    """What the engine prints beyond won demonstrations (failures, idle commands), from seeded
    random play on the first train games of every task type (harness/envs/corpus.py)."""
    from harness.envs.corpus import engine_texts

    played = interleave_task_types(discover_games(suite_root, "train").games)[:games]
    with EnvPool(num_workers=2, max_steps=steps) as pool:
        return engine_texts(pool, played, steps=steps, seed=0)


def collect_demos(suite_root: Path, path: Path, num_workers: int = 2, chunk: int = 128) -> list[dict]:
    """Exploring-expert episodes on every train game, in round-robin order over task types (so
    the held-out and warm-start prefixes hold every type); only won episodes are kept.
    Games are played `chunk` at a time: thousands of live engines at once exhaust the workers."""
    games = interleave_task_types(discover_games(suite_root, "train").games)
    episodes: list[dict] = []
    with EnvPool(num_workers=num_workers, max_steps=30) as pool:
        for start in range(0, len(games), chunk):
            episodes += play_experts(pool, games[start:start + chunk], expert="explorer")
    failed = [e for e in episodes if e["failed"]]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(episodes)} demonstration episodes failed in the env pool; "
                           f"the first: {failed[0]['failed']}")
    won = [e for e in episodes if e["won"]]
    save_jsonl(won, path)
    return won


_TAKE_RE = re.compile(r"^take ([a-z]+) \d+ from ")
_USE_RE = re.compile(r"^use ([a-z]+) \d+$")
_GO_RE = re.compile(r"^go to ([a-z]+) \d+$")


def renamed_copies(episodes: list[dict], copies: int, seed: int = 0, rename_lamps: bool = False) -> list[dict]:
    """`copies` renamed versions of each episode: object kinds (what can be taken or used, never
    a place) permuted, and each kind's numbers 1-9 permuted, the same way in the task, every
    observation, command and feedback of the episode. The expert's policy does not depend on
    which object is which, so every copy is still an expert demonstration."""
    places = {m.group(1) for e in episodes for t in e["turns"] for c in t["admissible"] for m in [_GO_RE.match(c)] if m}
    patterns = (_TAKE_RE, _USE_RE) if rename_lamps else (_TAKE_RE,)
    lamps = set() if rename_lamps else {m.group(1) for e in episodes for t in e["turns"] for c in t["admissible"]
                                         for m in [_USE_RE.match(c)] if m}
    objects = sorted({m.group(1) for e in episodes for t in e["turns"] for c in t["admissible"]
                      for p in patterns for m in [p.match(c)] if m} - places - lamps)
    if len(objects) < 2:
        return []
    pattern = re.compile(r"\b(" + "|".join(sorted(objects, key=len, reverse=True)) + r")(?: (\d+))?\b")
    rng = random.Random(seed)
    out = []
    for _ in range(copies):
        for episode in episodes:
            shuffled = objects[:]
            rng.shuffle(shuffled)
            kinds = dict(zip(objects, shuffled, strict=True))
            numbers = {o: dict(zip(map(str, range(1, 10)), map(str, rng.sample(range(1, 10), 9)), strict=True))
                       for o in objects}

            def swap(match: re.Match, kinds=kinds, numbers=numbers) -> str:
                kind, number = match.group(1), match.group(2)
                return kinds[kind] + ("" if number is None else " " + numbers[kind].get(number, number))

            def sub(text: str, swap=swap) -> str:
                return pattern.sub(swap, text)

            out.append({**episode, "task": sub(episode["task"]), "renamed": True, "turns": [
                {**t, "observation": sub(t["observation"]), "admissible": [sub(c) for c in t["admissible"]],
                 "action": sub(t["action"]), "feedback": sub(t.get("feedback", ""))} for t in episode["turns"]]})
    return out


def cached_demos(suite_root: Path, cache: Path, log) -> list[dict]:
    """The explorer's demonstrations of this suite, collected once per suite and explorer version
    (every tiny pair of the suite reuses them; they take minutes to play)."""
    path = cache / f"demos-{_suite_id(suite_root)}-v{PREPARE_VERSION}.jsonl"
    if path.exists():
        return load_jsonl(path)
    started = time.perf_counter()
    demos = collect_demos(suite_root, path)  # written atomically
    log(f"prepare: {len(demos)} exploring-expert demonstrations ({time.perf_counter() - started:.0f} s)")
    return demos


def _split(demos: list[dict], settings: TinySettings) -> tuple[list[dict], list[dict]]:
    """(held out, train): the first demonstrations (every task type, interleaved) are held out."""
    if len(demos) < 2:
        raise ValueError(f"only {len(demos)} won demonstrations: the suite needs more train games")
    held = min(settings.heldout_demos, max(1, len(demos) // 5))
    return demos[:held], demos[held:]


def _train_games(suite_root: Path, settings: TinySettings) -> list:
    """The train games in demonstration order (task types interleaved) after the held-out ones, as
    `_split` cuts the demonstrations: what DAgger rounds and the teacher-sourced student play."""
    games = interleave_task_types(discover_games(suite_root, "train").games)
    return games[min(settings.heldout_demos, max(1, len(games) // 5)):]


def _sft(role: str, spec: TinyModelSpec, sft: SFTSettings, data, heldout_data, tokenizer, out: Path,
         seed: int, log, device: str = "cpu", partial: Path | None = None, model=None) -> tuple[dict, object]:
    """SFT of a fresh model of `spec` (or of `model`, e.g. after the curriculum), saved to out/role."""
    t0 = time.perf_counter()
    model = build_tiny_model(spec, tokenizer, seed=seed).to(device) if model is None else model
    params = sum(p.numel() for p in model.parameters())
    every = max(1, sft.steps // 10)

    def progress(r: dict) -> None:
        if "resumed" in r:
            log(f"prepare: {role} sft resumed at step {r['resumed']} from {partial}")
        elif r["step"] % every == 0:
            log(f"prepare: {role} sft step {r['step']}/{sft.steps} loss {r['loss']:.3f}")

    losses = train_sft(model, data, sft, tokenizer.pad_token_id, log=progress,
                       checkpoint=None if partial is None else partial / f"{role}-sft.pt")
    accuracy = action_accuracy(model, heldout_data, tokenizer, tokenizer.pad_token_id)
    save_tiny(model, tokenizer, out / role, spec)  # save_pretrained copies GPU weights to the host
    report = {"params": params, "sft_examples": len(data), "final_loss": losses[-1], "device": str(device),
              "heldout_action_accuracy": accuracy, "build_s": time.perf_counter() - t0}
    log(f"prepare: {role} ({params / 1e6:.2f}M params) built in {report['build_s']:.0f} s; "
        f"held-out next-action exact match: " + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    return report, model


def _teacher_episodes(train: list[dict], settings: TinySettings) -> list[dict]:
    """The teacher's train demonstrations and their renamed copies."""
    return train + renamed_copies(train, settings.renamed_copies, settings.seed, settings.rename_lamps)


def _curriculum_sample(episodes, tokenizer, settings: TinySettings, prompt: PromptSettings, count: int | None):
    """The curriculum's one-message examples of the teacher's train episodes (all, or a seeded
    `count` of them)."""
    from harness.default.curriculum import curriculum_data

    data = curriculum_data(episodes, tokenizer, prompt, settings.curriculum.edits, settings.seed)
    return data if count is None else random.Random(settings.seed).sample(data, min(count, len(data)))


def _teacher_data(demos, tokenizer, settings: TinySettings, prompt: PromptSettings, extra_teacher_data):
    """(the teacher's SFT data, the held-out demonstrations' data)."""
    from harness.default.counterfactual import counterfactual_episodes

    heldout, train = _split(demos, settings)
    episodes = _teacher_episodes(train, settings)
    teacher_data = demo_data(episodes + counterfactual_episodes(episodes, settings.counterfactuals, settings.seed),
                             tokenizer, prompt, settings.layout)
    if settings.curriculum.mix > 0:
        teacher_data += _curriculum_sample(episodes, tokenizer, settings, prompt, settings.curriculum.mix)
    if extra_teacher_data is not None:
        teacher_data += extra_teacher_data(tokenizer, train)
    return teacher_data, demo_data(heldout, tokenizer, prompt, settings.layout)


DAGGER_STAGE_VERSION = "2"  # 2: one cache stage per round (round k continues from round k-1's entry)
LEGACY_DAGGER_DEFAULTS = {"judge_turns": False}
EPISODES_FILE = "dagger_episodes.jsonl"  # every round's labelled episodes, beside the stage's teacher


def _build_dagger_round(suite_root: Path, out: Path, base_dir: Path, previous: Path, round_index: int,
                        settings: TinySettings, prompt: PromptSettings, extra_teacher_data, teacher_report, log,
                        device: str = "cpu", student_dir: Path | None = None, judge_data=None) -> dict:
    """DAgger round `round_index` on the teacher in `previous` (the base teacher for round 0, else
    the stage of the round before): the earlier rounds' data is rebuilt from the episodes saved
    there, this round's train-game slice is rolled out and labelled (with `dagger.student_states`,
    the warm-start student in `student_dir` too), and the teacher is fine-tuned on the
    demonstrations plus every round's data. Saves the teacher and all episodes so far."""
    from harness.default.dagger import (
        dagger_round,
        episode_record,
        load_episode_records,
        round_data,
    )
    from harness.models import load_model, load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(str(base_dir / "teacher"))
    teacher = load_model(str(previous / "teacher"), device=device)
    teacher.requires_grad_(True)
    demos = cached_demos(suite_root, base_dir.parent, log)
    base_data, heldout_data = _teacher_data(demos, tokenizer, settings, prompt, extra_teacher_data)
    games = _train_games(suite_root, settings)
    student = load_model(str(student_dir), device=device) if settings.dagger.student_states else None
    judge = (lambda episodes, turns: judge_data(tokenizer, episodes, turns)) if judge_data is not None else None
    saved = previous / EPISODES_FILE
    records = load_episode_records(saved) if round_index > 0 and saved.exists() else []
    if sorted({r for r, _ in records}) != list(range(round_index)):
        raise RuntimeError(f"{previous} holds the episodes of rounds {sorted({r for r, _ in records})}, not of "
                           f"rounds 0..{round_index - 1} (a shipped stage comes without them); remove that "
                           "entry from the cache to rebuild it, then this round")
    aggregated = []
    for r in range(round_index):
        aggregated += round_data(r, [e for k, e in records if k == r], tokenizer, settings.dagger, prompt,
                                 settings.layout, settings.seed, judge)
    with EnvPool(max_steps=30) as pool:
        round_report, episodes = dagger_round(
            round_index, teacher, tokenizer, pool, games, base_data, aggregated, settings.dagger, prompt,
            settings.layout, settings.max_new_tokens, 30, settings.teacher_sft.batch_size, settings.seed, log,
            student=student, judge_data=judge)
    accuracy = action_accuracy(teacher, heldout_data, tokenizer, tokenizer.pad_token_id)
    save_tiny(teacher, tokenizer, out / "teacher", settings.teacher)
    lines = [json.dumps(episode_record(e, r)) for r, e in records] + [json.dumps(episode_record(e, round_index))
                                                                       for e in episodes]
    (out / EPISODES_FILE).write_text("\n".join(lines) + "\n")
    report = json.loads((previous / "report.json").read_text())
    rounds = report.get("dagger", {}).get("rounds", []) if round_index > 0 else []
    round_report |= {"stage_s": time.perf_counter() - started, "heldout_action_accuracy": accuracy}
    report["teacher"] = {**report["teacher"], "heldout_action_accuracy": accuracy}
    report["dagger"] = {"rounds": rounds + [round_report], "base_teacher": base_dir.name,
                        "build_s": sum(r.get("stage_s", 0.0) for r in rounds + [round_report])}
    log(f"prepare: DAgger round {round_index} teacher held-out next-action exact match: "
        + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items()))
    if teacher_report is not None:
        report["teacher_judge"] = round_report["teacher_judge"] = teacher_report(teacher, tokenizer)
        log(f"prepare: DAgger round {round_index} teacher judge accuracy on held-out turns: {report['teacher_judge']}")
    return report


def _curriculum_stage(demos, tokenizer, settings: TinySettings, prompt: PromptSettings, log, device: str,
                      partial: Path | None) -> tuple[dict, object]:
    """A fresh teacher trained `curriculum.steps` steps on the one-message search examples
    (harness/default/curriculum.py). Skipped when the teacher's SFT has a checkpoint to resume
    from: that checkpoint holds the model and random state the stage would give it again."""
    started = time.perf_counter()
    model = build_tiny_model(settings.teacher, tokenizer, seed=settings.seed).to(device)
    if partial is not None and (partial / "teacher-sft.pt").exists():
        return {"skipped": "the teacher's SFT resumes from its checkpoint"}, model
    c = settings.curriculum
    data = _curriculum_sample(_teacher_episodes(_split(demos, settings)[1], settings), tokenizer, settings, prompt,
                              None)
    sft = SFTSettings(steps=c.steps, batch_size=c.batch_size, lr=c.lr, warmup_steps=c.warmup_steps, seed=settings.seed)
    every = max(1, c.steps // 5)

    def progress(r: dict) -> None:
        if "step" in r and r["step"] % every == 0:
            log(f"prepare: teacher curriculum step {r['step']}/{c.steps} loss {r['loss']:.3f}")

    losses = train_sft(model, data, sft, tokenizer.pad_token_id, log=progress,
                       checkpoint=None if partial is None else partial / "teacher-curriculum.pt")
    heldout = heldout_report(model, _split(demos, settings)[0], tokenizer, prompt, tokenizer.pad_token_id, "full",
                             settings.seed)  # the stage's own format: one message
    report = {"examples": len(data), "final_loss": losses[-1], "heldout_search_first_token": heldout,
              "build_s": time.perf_counter() - started}
    log(f"prepare: teacher curriculum ({len(data)} one-message examples, {c.steps} steps) in {report['build_s']:.0f} s; "
        f"held-out first reply token right: take {heldout['take']:.2f}, go on {heldout['go_on']:.2f}")
    return report, model


def _build_teacher(suite_root: Path, out: Path, settings: TinySettings, prompt: PromptSettings,
                   extra_teacher_data, extra_words: list[str], teacher_report, log, device: str = "cpu",
                   partial: Path | None = None) -> dict:
    started = time.perf_counter()
    demos = cached_demos(suite_root, out.parent, log)
    corpus = [e["task"] for e in demos] + [t["observation"] + " " + " ".join(t["admissible"]) + " " + t["feedback"]
                                           for e in demos for t in e["turns"]]
    if settings.engine_corpus:
        corpus += engine_corpus(suite_root)
    tokenizer = build_tokenizer(corpus, extra_words=list(extra_words) + [
        "your", "task", "is", "to", "observation", "action", "admissible", "actions", "you", "have", "taken",
        "steps", "last"])
    teacher_data, heldout_data = _teacher_data(demos, tokenizer, settings, prompt, extra_teacher_data)
    report: dict = {"demos": len(demos), "teacher_examples": len(teacher_data), "vocab": len(tokenizer)}
    heldout = _split(demos, settings)[0]
    model = None
    if settings.curriculum.steps > 0:
        report["curriculum"], model = _curriculum_stage(demos, tokenizer, settings, prompt, log, device, partial)
    report["teacher"], teacher = _sft("teacher", settings.teacher, settings.teacher_sft, teacher_data, heldout_data,
                                      tokenizer, out, settings.seed, log, device, partial, model)
    report["teacher"]["heldout_search_first_token"] = heldout_report(teacher, heldout, tokenizer, prompt,
                                                                     tokenizer.pad_token_id, settings.layout,
                                                                     settings.seed)
    if teacher_report is not None:
        report["teacher_judge"] = teacher_report(teacher, tokenizer)
        log(f"prepare: teacher judge accuracy on held-out turns: {report['teacher_judge']}")
    report["teacher_total_s"] = time.perf_counter() - started
    return report


def _build_student(suite_root: Path, out: Path, teacher_dir: Path, settings: TinySettings,
                   prompt: PromptSettings, log, device: str = "cpu", partial: Path | None = None) -> dict:
    from harness.models import load_tokenizer

    tokenizer = load_tokenizer(str(teacher_dir / "teacher"))
    heldout, train = _split(cached_demos(suite_root, teacher_dir.parent, log), settings)
    data = demo_data(train[: settings.student_demos], tokenizer, prompt, settings.layout)
    report, _ = _sft("student", settings.student, settings.student_sft, data,
                     demo_data(heldout, tokenizer, prompt, settings.layout), tokenizer, out, settings.seed + 1, log, device, partial)
    return {"student": report}


def teacher_episode_data(teacher, tokenizer, games, settings: TinySettings, prompt: PromptSettings,
                         max_steps: int = 30) -> tuple[list, int]:
    """The teacher's greedy episodes on `games` (64 envs at a time): (the SFT data of the won ones,
    token for token as it played them, one datum per episode in the full layout; how many it won)."""
    from harness.agent.rollout import RolloutSettings, rollout

    played = RolloutSettings(layout=settings.layout, greedy=True, max_new_tokens=settings.max_new_tokens,
                             max_turns=max_steps)
    data, won = [], 0
    with EnvPool(max_steps=max_steps) as pool:
        for start in range(0, len(games), 64):
            for trajectory in rollout(teacher, tokenizer, pool, games[start:start + 64], played, prompt,
                                      seed=settings.seed + start):
                if trajectory.won and not trajectory.failed:
                    won += 1
                    data += trajectory.data
    return data, won


def _build_student_from_teacher(suite_root: Path, out: Path, teacher_dir: Path, tokenizer_dir: Path,
                                settings: TinySettings, prompt: PromptSettings, log, device: str = "cpu",
                                partial: Path | None = None) -> dict:
    """The student warm-started on the teacher's own greedy episodes (`student_source=teacher`):
    the teacher in `teacher_dir` plays the first `student_demos` train games after the held-out
    ones (the games of the expert's demonstrations); the won episodes are the student's SFT data.
    Held-out figures are on the same held-out expert demonstrations as with the expert source."""
    from harness.models import load_model, load_tokenizer

    started = time.perf_counter()
    tokenizer = load_tokenizer(str(tokenizer_dir / "teacher"))
    teacher = load_model(str(teacher_dir / "teacher"), device=device)
    heldout, _ = _split(cached_demos(suite_root, tokenizer_dir.parent, log), settings)
    games = _train_games(suite_root, settings)[: settings.student_demos]
    data, won = teacher_episode_data(teacher, tokenizer, games, settings, prompt)
    rollout_s = time.perf_counter() - started
    log(f"prepare: the teacher won {won} of {len(games)} train games greedy in {rollout_s:.0f} s: the student's data")
    if not data:
        raise ValueError(f"the teacher in {teacher_dir} won none of {len(games)} train games; "
                         "the student cannot be warm-started on its episodes (use student_source=expert)")
    report, _ = _sft("student", settings.student, settings.student_sft, data,
                     demo_data(heldout, tokenizer, prompt, settings.layout), tokenizer, out, settings.seed + 1, log,
                     device, partial)
    return {"student": report | {"source": "teacher", "teacher": teacher_dir.name, "teacher_games": len(games),
                                 "teacher_won": won, "rollout_s": rollout_s}}


def partial_dir(base: Path, key: str) -> Path:
    """Where a build of `key` keeps its SFT checkpoints until it is done (a killed build resumes)."""
    return base / f".{key}.partial"


def _cached(base: Path, key: str, build, log=print) -> dict:
    """Run `build(tmp_dir) -> report` once per key: a file lock makes concurrent jobs (a Slurm array
    starting at once) wait for one builder, and the result is renamed into place. An entry shipped
    in the repository under the same key (harness/cache.py) is copied instead of built. The
    build's SFT checkpoints (`partial_dir`) outlive a killed build and are removed when it ends."""
    final = base / key
    with cache.locked(base / f"{key}.lock"):
        if not (final / "report.json").exists():
            tmp = base / f".{key}.{os.getpid()}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            if (entry := cache.model_entry(key)) is not None:  # built here before, shipped in assets/
                log(f"tiny {key}: copying the shipped build from {entry}")
                shutil.copytree(entry, tmp)
            else:
                cache.check_may_build("the tiny model", key)
                tmp.mkdir(parents=True)
                report = build(tmp)
                (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            shutil.rmtree(partial_dir(base, key), ignore_errors=True)
    return json.loads((final / "report.json").read_text())


def prepare_tiny(suite_root: str | os.PathLike, settings: TinySettings | None = None,
                 prompt: PromptSettings | None = None, cache_root: str | os.PathLike | None = None,
                 extra_teacher_data=None, extra_key: str = "", extra_words: tuple[str, ...] = (),
                 teacher_report=None, log=print, device: str = "auto", dagger_judge_data=None) -> TinyPair:
    """Build (or reuse) the tiny teacher/student pair for this suite; safe under concurrency.

    Two cached stages: the teacher (and the shared tokenizer) under `teacher-<key>`, keyed by
    everything that made it; the student under `<key>`, keyed by the teacher's key and its own
    fields, so a new warm-start setting costs the student's minutes, not the teacher's.

    extra_teacher_data: optional callable (tokenizer, train_episodes) -> list[Datum] joined to the
    teacher's SFT data (the judge examples); `extra_key` must name it for the cache key;
    `extra_words` join the tokenizer's vocabulary; `teacher_report(teacher, tokenizer) -> dict`
    adds measurements of the trained teacher (the judge's held-out accuracy) to the report.
    `dagger_judge_data(tokenizer, labelled_episodes, turns) -> list[Datum]` makes judge examples of
    DAgger episodes' (episode, turn) pairs (needed by `dagger.judge_turns`).
    With `dagger.rounds` = R > 0 the teacher is the DAgger stage after R rounds, one cache entry
    per round: round k continues from round k-1's entry, so R + 1 rounds cost one round more.
    `device` ('auto': the GPU when there is one) is where the SFT runs; it is not part of the
    cache key, so a pair built on a GPU node serves CPU runs of the same settings. Its weights
    are not those of a CPU build: the rounding differs, and 800 SFT steps amplify it (the
    default teacher built on an H100 won 47.9% of valid_seen, the CPU build 52.1%).
    """
    suite_root = Path(suite_root)
    settings, prompt = settings or TinySettings(), prompt or PromptSettings()
    from harness.models import resolve_device

    device = str(resolve_device(device))
    base = Path(cache_root) if cache_root else cache.cache_root() / "tiny"
    teacher_key = _cache_key(suite_root, settings, prompt, extra_key + "|" + ",".join(extra_words))
    teacher_dir = base / f"teacher-{teacher_key}"

    def seeded(build):
        def run(tmp: Path) -> dict:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed)
                return build(tmp)
        return run

    def base_teacher() -> dict:
        return _cached(base, f"teacher-{base_key}", seeded(lambda tmp: _build_teacher(
            suite_root, tmp, settings, prompt, extra_teacher_data, list(extra_words), teacher_report, log, device,
            partial_dir(base, f"teacher-{base_key}"))), log)

    def available(key: str) -> bool:
        return (base / key / "report.json").exists() or cache.model_entry(key) is not None

    # the student is made from the base teacher's tokenizer and the expert's demonstrations, never
    # from the teacher's weights: a DAgger teacher keeps the same warm-start student
    base_key = teacher_key
    student_key = _expert_student_key(base_key, settings)

    def student(tokenizer_dir: Path) -> dict:
        return _cached(base, student_key, seeded(lambda tmp: _build_student(
            suite_root, tmp, tokenizer_dir, settings, prompt, log, device, partial_dir(base, student_key))), log)

    base_dir = teacher_dir

    def dagger_stage(rounds: int) -> tuple[Path, dict]:
        staged = replace(settings, dagger=replace(settings.dagger, rounds=rounds))
        stage_dir = base / f"teacher-{_dagger_key(base_key, staged)}"
        if available(stage_dir.name):
            return stage_dir, _cached(base, stage_dir.name, lambda tmp: {}, log)  # cached or shipped
        previous = base_dir if rounds == 1 else dagger_stage(rounds - 1)[0]
        if rounds == 1:
            base_teacher()
        student(base_dir)  # built before the DAgger stage, which may roll it out (dagger.student_states)
        return stage_dir, _cached(base, stage_dir.name, seeded(lambda tmp: _build_dagger_round(
            suite_root, tmp, base_dir, previous, rounds - 1, staged, prompt, extra_teacher_data, teacher_report,
            log, device, base / student_key / "student", dagger_judge_data)), log)

    if settings.dagger.rounds > 0:
        teacher_dir, report = dagger_stage(settings.dagger.rounds)
        tokenizer_dir = base_dir if (base_dir / "teacher").exists() else teacher_dir
    else:
        report = base_teacher()
        tokenizer_dir = teacher_dir
    if settings.student_source == "teacher":  # a stage after the final teacher: its key names that teacher
        student_key = _student_key(teacher_dir.name, settings)
        student_report = _cached(base, student_key, seeded(lambda tmp: _build_student_from_teacher(
            suite_root, tmp, teacher_dir, tokenizer_dir, settings, prompt, log, device,
            partial_dir(base, student_key))), log)
    else:
        student_report = student(tokenizer_dir)
    report = {**report, **student_report}
    return TinyPair(base / student_key, teacher_dir / "teacher", base / student_key / "student", report)
