"""The offline ALFWorld-domain game suite: generate, verify with the real engine, cache.

Every game is written in the real on-disk layout
(`json_2.1.1/<split>/<task>-<Obj>-None-<Recep>-<scene>/trial_*/` with `traj_data.json`,
`game.tw-pddl`, `initial_state.pddl`) and is stamped `solvable: true` with a `walkthrough`
only after Fast Downward's plan, applied step by step in textworld's PDDL state, reaches the
goal; the walkthrough is named with alfworld's own demangler (`apple 1`), as AlfredTWEnv
names things. A game that does not verify is drawn again, never shipped.

    python -m harness.envs.generate --out DIR --seed 0          # or without --out: the cache
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import alfworld.gen.constants as C

from harness import cache
from harness.envs import pddl_writer, scenes
from harness.envs.games import DATA_VERSION_DIR, TASK_TYPES

GENERATOR_VERSION = "1"
SPLIT_CODES = {"train": "T", "valid_seen": "S", "valid_unseen": "U"}
MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class SuiteSpec:
    """What a suite is made of; every field but num_workers goes into its hash."""

    seed: int = 0
    """Seed of every random draw (templates, goals, placements)."""
    n_train: int = 2000
    """Train games (the real benchmark has 3,553)."""
    n_valid_seen: int = 140
    """valid_seen games: train rooms, new placements and goals (real: 140)."""
    n_valid_unseen: int = 134
    """valid_unseen games: rooms no train game uses (real: 134)."""
    receptacles_per_room: int = 8
    """Receptacles kept from each ALFRED floor plan (small rooms keep all of theirs)."""
    distractors: int = 4
    """Objects of other classes placed in each game besides the targets (and the lamp)."""
    num_workers: int = 2
    """Verification processes (0: verify in this process)."""

    def __post_init__(self) -> None:
        for name in ("n_train", "n_valid_seen", "n_valid_unseen", "distractors", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"SuiteSpec.{name} must be >= 0, got {getattr(self, name)}.")
        if self.receptacles_per_room < 3:
            raise ValueError(f"SuiteSpec.receptacles_per_room must be >= 3 (a kitchen needs a fridge, "
                             f"a microwave and a sink), got {self.receptacles_per_room}.")
        if self.n_valid_seen and self.n_train < len(TASK_TYPES):
            raise ValueError(f"valid_seen reuses the rooms of train games, so n_train must be >= "
                             f"{len(TASK_TYPES)} (one game per task type) when n_valid_seen > 0; "
                             f"got n_train={self.n_train}.")

    def hashed_fields(self) -> dict:
        """The fields that define the suite's content."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "num_workers"}


def _alfworld_version() -> str:
    return importlib.metadata.version("alfworld")


def suite_hash(spec: SuiteSpec) -> str:
    """Hash of (generator version, spec): the suite's cache key."""
    # The domain and grammar text come from the installed alfworld: its version is an input too.
    payload = pddl_writer.dumps({"version": GENERATOR_VERSION, "alfworld": _alfworld_version(),
                                 **spec.hashed_fields()})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def template_pools(receptacles_per_room: int) -> dict[str, list[scenes.RoomTemplate]]:
    """Train rooms (ALFRED's train floor plans) and held-out rooms (its test floor plans)."""
    def load(numbers: list[int]) -> list[scenes.RoomTemplate]:
        loaded = (scenes.load_template(n, receptacles_per_room) for n in sorted(numbers))
        return [t for t in loaded if t is not None]
    return {"train": load(C.TRAIN_SCENE_NUMBERS), "valid_unseen": load(C.TEST_SCENE_NUMBERS)}


@dataclass
class _Slot:
    split: str
    index: int
    task_type: str
    attempt: int = 0
    draw: scenes.GameDraw | None = None
    problem: str = ""
    walkthrough: list[str] | None = None
    why_not: str = ""  # why the last draw failed verification

    @property
    def trial(self) -> str:
        return f"trial_{SPLIT_CODES[self.split]}{self.index:05d}"


def _task_sequence(spec: SuiteSpec, split: str, count: int) -> list[str]:
    names = [TASK_TYPES[k] for k in sorted(TASK_TYPES)]
    sequence = [names[i % len(names)] for i in range(count)]  # balanced to within one game
    random.Random(f"{GENERATOR_VERSION}|{spec.seed}|{split}|types").shuffle(sequence)
    return sequence


def _draw(spec: SuiteSpec, slot: _Slot, pool: list[scenes.RoomTemplate], taken: set) -> None:
    """Fill slot.draw with the first draw from slot.attempt on that no other game has."""
    candidates = [t for t in pool if scenes.goal_candidates(t, slot.task_type)]
    if not candidates:
        raise RuntimeError(f"No {slot.split} room can host {slot.task_type} "
                           f"(receptacles_per_room={spec.receptacles_per_room}).")
    while slot.attempt < MAX_ATTEMPTS:
        rng = random.Random(f"{GENERATOR_VERSION}|{spec.seed}|{slot.split}|{slot.index}|{slot.attempt}")
        template = rng.choice(candidates)
        draw = scenes.draw_game(template, slot.task_type, spec.distractors, rng)
        if draw.fingerprint() not in taken:
            taken.add(draw.fingerprint())
            slot.draw = draw
            slot.problem = pddl_writer.problem_text(draw, template, f"plan_{slot.trial}")
            return
        slot.attempt += 1
    raise RuntimeError(f"Could not draw a new game for {slot.split} #{slot.index} in {MAX_ATTEMPTS} "
                       "attempts: the rooms are too small for this many games; raise "
                       "receptacles_per_room or distractors, or ask for fewer games.")


# ---- verification (runs in worker processes: Fast Downward rewrites sys.argv/sys.stdout) ----

_ENGINE: tuple | None = None  # (fast_downward, textworld's pddl logic, GameLogic, libdownward)


def _engine() -> tuple:
    global _ENGINE
    if _ENGINE is None:
        # One GameLogic and one libdownward per process: each PddlEnv would load its own copy
        # of the library (~2 MB, never freed) and parse the grammar again.
        import fast_downward
        from textworld.envs.pddl import logic as pddl_logic

        logic = pddl_logic.GameLogic(domain=pddl_writer.domain_text(),
                                     grammar=pddl_writer.grammar_text("verify the plan"))
        _ENGINE = (fast_downward, pddl_logic, logic, fast_downward.load_lib())
    return _ENGINE


def _demangled_names(state) -> dict:
    """Entity infos named as AlfredTWEnv names them (`apple 1`), like PddlEnv + AlfredDemangler."""
    from alfworld.agents.utils.misc import Demangler
    from textworld.generator.game import EntityInfo

    infos = {v.name: EntityInfo(v.name, v.type) for fact in state.facts for v in fact.arguments}
    demangler = Demangler(game_infos=infos, shuffle=False)
    for info in infos.values():
        info.name = demangler.demangle_alfred_name(info.id)
    return infos


def _verify(job: tuple[int, str]) -> tuple[int, list[str] | None, str]:
    """Plan from the initial state with Fast Downward, apply the plan's operators in the
    engine's state and check the engine's goal test; return (job id, walkthrough or None, why).

    This is what PddlEnv does on reset/step minus rendering text and admissible commands for
    every state (most of the cost); the walkthrough text is textworld's own `policy_commands`.
    """
    job_id, problem = job
    try:
        fast_downward, pddl_logic, logic, downward = _engine()
        state = pddl_logic.PddlState(downward, problem, logic)
        if state.check_goal():
            return job_id, None, "goal already satisfied at start"
        walkthrough = state.replan(_demangled_names(state))
        if not walkthrough:
            return job_id, None, "the planner found no plan"
        operators = (fast_downward.Operator * downward.get_last_plan_length())()
        downward.get_last_plan(operators)
        for step in [op.name for op in operators]:
            applicable = {state._operators[a.id].name: a for a in state.all_applicable_actions()}
            if step not in applicable:
                return job_id, None, f"plan step {step!r} is not applicable"
            state.apply(applicable[step])
        if not state.check_goal():
            return job_id, None, "the plan did not reach the goal"
        return job_id, walkthrough, ""
    except Exception as error:  # a game the engine cannot load is a failed draw, not a crash
        return job_id, None, f"{type(error).__name__}: {error}"


def _verify_here(jobs: list) -> list:
    argv, stdout = list(sys.argv), sys.stdout
    try:
        return [_verify(job) for job in jobs]
    finally:
        sys.argv, sys.stdout = argv, stdout


def _verify_all(slots: list[_Slot], pool) -> list[_Slot]:
    """Verify every slot; stamp the walkthrough of those that pass; return those that fail."""
    jobs = [(i, s.problem) for i, s in enumerate(slots)]
    results = pool.imap_unordered(_verify, jobs, chunksize=4) if pool else _verify_here(jobs)
    failed = []
    for job_id, walkthrough, why_not in results:
        slots[job_id].walkthrough, slots[job_id].why_not = walkthrough, why_not
        if walkthrough is None:
            failed.append(slots[job_id])
    return sorted(failed, key=lambda s: (s.split, s.index))


def _generate_slots(spec: SuiteSpec, plan: list[tuple[str, int, list]], taken: set, pool) -> dict:
    """Draw and verify the games of some splits; redraw failures until all verify."""
    slots: dict[str, list[_Slot]] = {}
    for split, count, rooms in plan:
        slots[split] = [_Slot(split, i, t) for i, t in enumerate(_task_sequence(spec, split, count))]
        for slot in slots[split]:
            _draw(spec, slot, rooms, taken)
    pending = [s for split_slots in slots.values() for s in split_slots]
    rooms_of = {split: rooms for split, _, rooms in plan}
    rejected: Counter = Counter()
    while pending:
        failed = _verify_all(pending, pool)
        for slot in failed:
            rejected[slot.split] += 1
            slot.attempt += 1
            if slot.attempt >= MAX_ATTEMPTS:
                raise RuntimeError(f"{slot.split} game #{slot.index} ({slot.task_type}) failed verification "
                                   f"{slot.attempt} times; last reason: {slot.why_not}. Is the alfworld/"
                                   "textworld install complete (fast-downward built)?")
            _draw(spec, slot, rooms_of[slot.split], taken)
        pending = failed
    return {"slots": slots, "rejected": rejected}


@contextlib.contextmanager
def _worker_pool(num_workers: int):
    if num_workers == 0:
        yield None
        return
    context = multiprocessing.get_context("spawn")  # fork would copy this process's engine state
    with context.Pool(num_workers) as pool:
        yield pool


def _write_game(root: Path, spec: SuiteSpec, slot: _Slot) -> None:
    draw = slot.draw
    folder = root / DATA_VERSION_DIR / slot.split / pddl_writer.task_dir_name(draw) / slot.trial
    folder.mkdir(parents=True, exist_ok=True)
    seed = int(hashlib.sha256(f"{spec.seed}|{slot.split}|{slot.index}|{slot.attempt}".encode())
               .hexdigest()[:8], 16)
    extra = {"name": "harness.envs.generate", "version": GENERATOR_VERSION, "split": slot.split,
             "template": draw.scene_num, "suite_seed": spec.seed, "attempt": slot.attempt}
    (folder / "traj_data.json").write_text(pddl_writer.traj_json(draw, slot.trial, seed, extra))
    (folder / "game.tw-pddl").write_text(pddl_writer.game_json(draw, slot.problem, slot.walkthrough))
    (folder / "initial_state.pddl").write_text(slot.problem)


def generate_suite(spec: SuiteSpec, out_dir: str | Path) -> dict:
    """Generate, verify and write the suite under out_dir; return its summary (suite.json + time)."""
    root = Path(out_dir)
    if (root / DATA_VERSION_DIR).exists():
        raise FileExistsError(f"{root / DATA_VERSION_DIR} already exists; remove it or choose another --out.")
    start = time.perf_counter()
    pools = template_pools(spec.receptacles_per_room)
    taken: set = set()
    with _worker_pool(spec.num_workers) as pool:
        first = _generate_slots(spec, [("train", spec.n_train, pools["train"]),
                                       ("valid_unseen", spec.n_valid_unseen, pools["valid_unseen"])],
                                taken, pool)
        used = {s.draw.scene_num for s in first["slots"]["train"]}
        seen_rooms = [t for t in pools["train"] if t.scene_num in used]
        second = _generate_slots(spec, [("valid_seen", spec.n_valid_seen, seen_rooms)], taken, pool)
    slots = {**first["slots"], **second["slots"]}
    rejected = first["rejected"] + second["rejected"]
    for split in ("train", "valid_seen", "valid_unseen"):
        for slot in slots[split]:
            _write_game(root, spec, slot)
    summary = {
        "generator": "harness.envs.generate", "version": GENERATOR_VERSION, "hash": suite_hash(spec),
        "alfworld": _alfworld_version(),
        "spec": spec.hashed_fields(),
        "counts": {split: {"total": len(s), **Counter(x.task_type for x in s)} for split, s in slots.items()},
        "templates": {split: sorted({x.draw.scene_num for x in s}) for split, s in slots.items()},
        "rejected_draws": {split: rejected[split] for split in slots},
        "receptacles_per_template": {str(t.scene_num): len(t.receptacles)
                                     for ts in pools.values() for t in ts},
    }
    (root / "suite.json").write_text(json.dumps(summary, sort_keys=True, indent=1) + "\n")
    return {**summary, "seconds": round(time.perf_counter() - start, 2)}


def ensure_suite(spec: SuiteSpec, cache_root: str | Path | None = None) -> Path:
    """The data root (the folder holding json_2.1.1) of this suite, generated once and cached."""
    base = cache.cache_root(cache_root) / "games"
    root = base / suite_hash(spec)
    if (root / "suite.json").is_file():
        return root
    base.mkdir(parents=True, exist_ok=True)
    # The lock only saves a second process the work; the rename alone keeps the cache whole.
    with cache.locked(base / f".{root.name}.lock"):
        if (root / "suite.json").is_file():
            return root
        if root.exists():
            raise FileExistsError(f"{root} exists but is not a complete suite (no suite.json); "
                                  "delete that folder and run again.")
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=base))
        try:
            if (archive := cache.suite_archive(root.name)) is not None:  # generated here before, shipped
                cache.unpack_suite(archive, tmp)
            else:
                cache.check_may_build("the game suite", root.name)
                generate_suite(spec, tmp)
            try:
                os.rename(tmp, root)
            except OSError:
                if not (root / "suite.json").is_file():  # not a lost race: a real error
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> dict:
    """Command line: generate a suite into --out (or the cache) and print counts and time."""
    defaults = SuiteSpec()
    parser = argparse.ArgumentParser(prog="python -m harness.envs.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the suite exactly here (default: the cache)")
    parser.add_argument("--cache-root", help="cache folder (default: $SAGE_OPD_CACHE or ~/.cache/sage-opd)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--n-valid-seen", type=int, default=defaults.n_valid_seen)
    parser.add_argument("--n-valid-unseen", type=int, default=defaults.n_valid_unseen)
    parser.add_argument("--receptacles", type=int, default=defaults.receptacles_per_room,
                        help="receptacles per room")
    parser.add_argument("--distractors", type=int, default=defaults.distractors)
    parser.add_argument("--workers", type=int, default=defaults.num_workers)
    args = parser.parse_args(argv)
    spec = SuiteSpec(seed=args.seed, n_train=args.n_train, n_valid_seen=args.n_valid_seen,
                     n_valid_unseen=args.n_valid_unseen, receptacles_per_room=args.receptacles,
                     distractors=args.distractors, num_workers=args.workers)
    start = time.perf_counter()
    if args.out:
        summary = generate_suite(spec, args.out)
        root = Path(args.out)
    else:
        root = ensure_suite(spec, args.cache_root)
        summary = json.loads((root / "suite.json").read_text())
    seconds = time.perf_counter() - start
    print(f"suite {summary['hash']} (generator v{GENERATOR_VERSION}) at {root}")
    for split, counts in summary["counts"].items():
        per_type = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k != "total")
        print(f"  {split}: {counts['total']} games on {len(summary['templates'][split])} rooms ({per_type})")
    print(f"time: {seconds:.1f} s with {spec.num_workers} worker(s)")
    return {**summary, "root": str(root), "seconds": seconds, "spec_full": asdict(spec)}


if __name__ == "__main__":
    main()
