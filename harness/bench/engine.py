"""The exact engine speed-up (harness/envs/engine_cache.py): ms per step and per reset with and
without it, and whether every transcript is identical, from one run.

    python -m harness.bench.engine [--quick] [--data-root DIR] [--games-per-type 3] [--random-steps 20]

Each side runs in its own fresh process (the patch is process-wide) and plays the same games:
unpatched, patched with a fresh folder of kept results (env.engine_disk_cache: the first
run over these games, which writes them), and patched again over that folder (every later run).
per game the walkthrough, then a second episode of seeded random admissible play with an
invalid command every few steps. A transcript is every feedback text, admissible list, `won`
and `done` of both episodes. Without --data-root it uses the default generated suite.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

INVALID_COMMANDS = ("jump over the moon", "take unicorn 1 from sofa 9", "go to nowhere", "")


def _snapshot(state, done: bool) -> dict:
    return {"feedback": state.feedback, "admissible": list(state.get("admissible_commands") or []),
            "won": bool(state.get("won")), "done": bool(done)}


def play_transcripts(gamefiles: list[str], patched: bool, seed: int = 0, random_steps: int = 20,
                     invalid_every: int = 4, disk_dir: str | None = None) -> tuple[list[list[dict]], dict[str, list[float]]]:
    """Play every game (walkthrough, then seeded random admissible play with invalid commands)
    in THIS process; returns (one transcript per game, {"reset": [s...], "step": [s...]})."""
    from harness.envs import engine_cache
    from harness.envs.alfworld import make_textworld_env

    if patched:
        engine_cache.install(disk_dir=disk_dir)
    argv, stdout = list(sys.argv), sys.stdout
    times: dict[str, list[float]] = defaultdict(list)
    transcripts = []
    for g, gamefile in enumerate(gamefiles):
        with open(gamefile) as f:
            walkthrough = json.load(f).get("walkthrough") or []
        start = time.perf_counter()
        env = make_textworld_env(gamefile, with_plan=False)
        times["load"].append(time.perf_counter() - start)
        rng = random.Random(seed * 1_000_003 + g)
        transcript = []
        for episode in ("walkthrough", "random"):
            start = time.perf_counter()
            state = env.reset()
            times["reset"].append(time.perf_counter() - start)
            sys.argv, sys.stdout = list(argv), stdout  # Fast Downward clobbers both on reset
            transcript.append(_snapshot(state, False))
            commands = iter(walkthrough) if episode == "walkthrough" else None
            for t in range(len(walkthrough) if episode == "walkthrough" else random_steps):
                if commands is not None:
                    command = next(commands)
                elif t % invalid_every == invalid_every - 1:
                    command = INVALID_COMMANDS[rng.randrange(len(INVALID_COMMANDS))]
                else:
                    admissible = sorted(state.get("admissible_commands") or [])
                    command = admissible[rng.randrange(len(admissible))] if admissible else "look"
                start = time.perf_counter()
                state, _, done = env.step(command)
                times["step"].append(time.perf_counter() - start)
                transcript.append({"command": command, **_snapshot(state, done)})
                if done:
                    break
        env.close()
        transcripts.append(transcript)
    return transcripts, dict(times)


def _play_in_fresh_process(gamefiles: list[str], patched: bool, seed: int, random_steps: int,
                           disk_dir: str | None = None):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(play_transcripts, (gamefiles, patched, seed, random_steps, 4, disk_dir))


def games_per_task_type(data_root, split: str, per_type: int) -> list[str]:
    """The first `per_type` games of every task type in a split (every type is covered)."""
    from harness.envs import discover_games

    by_type: dict[str, list[str]] = defaultdict(list)
    for game in discover_games(data_root, split).games:
        if len(by_type[game.task_type]) < per_type:
            by_type[game.task_type].append(game.gamefile)
    return [g for t in sorted(by_type) for g in by_type[t]]


def compare(gamefiles: list[str], seed: int = 0, random_steps: int = 20) -> dict:
    """The three sides in fresh processes; the figures of one run."""
    plain, plain_times = _play_in_fresh_process(gamefiles, False, seed, random_steps)
    with tempfile.TemporaryDirectory(prefix="engine-disk-") as disk:
        fast, fast_times = _play_in_fresh_process(gamefiles, True, seed, random_steps, disk)
        kept = len(list(Path(disk).glob("*/*.pkl.z")))
        warm, warm_times = _play_in_fresh_process(gamefiles, True, seed, random_steps, disk)
    identical = sum(a == b == c for a, b, c in zip(plain, fast, warm, strict=True))

    def ms(times: dict, kind: str) -> float:
        return 1000 * sum(times[kind]) / max(1, len(times[kind]))

    return {
        "games": len(gamefiles), "steps": len(fast_times["step"]), "identical": identical,
        "step_ms": (ms(plain_times, "step"), ms(fast_times, "step")),
        "reset_ms": (ms(plain_times, "reset"), ms(fast_times, "reset")),
        "load_ms": (ms(plain_times, "load"), ms(fast_times, "load")),
        "warm_ms": {kind: ms(warm_times, kind) for kind in ("step", "reset", "load")}, "kept_files": kept,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--split", default="valid_seen")
    parser.add_argument("--games-per-type", type=int, default=3)
    parser.add_argument("--random-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 game per task type, 10 random steps (under 60 s)")
    args = parser.parse_args()
    if args.quick:
        args.games_per_type, args.random_steps = 1, 10
    if args.data_root is None:
        from harness.envs.generate import SuiteSpec, ensure_suite

        args.data_root = ensure_suite(SuiteSpec())
    gamefiles = games_per_task_type(args.data_root, args.split, args.games_per_type)
    print(f"data root: {args.data_root} ({args.split}, {len(gamefiles)} games, every task type)")
    r = compare(gamefiles, args.seed, args.random_steps)
    print(f"step:  {r['step_ms'][0]:7.1f} ms unpatched   {r['step_ms'][1]:7.1f} ms patched   ({r['steps']} steps)")
    print(f"reset: {r['reset_ms'][0]:7.1f} ms unpatched   {r['reset_ms'][1]:7.1f} ms patched   ({2 * r['games']} resets)")
    print(f"load:  {r['load_ms'][0]:7.1f} ms unpatched   {r['load_ms'][1]:7.1f} ms patched   ({r['games']} loads)")
    w = r["warm_ms"]
    print(f"with the engine's results kept on disk ({r['kept_files']} files): step {w['step']:.1f} ms, "
          f"reset {w['reset']:.1f} ms, load {w['load']:.1f} ms; "
          f"load speed-up {r['load_ms'][0] / w['load']:.2f}x unpatched, {r['load_ms'][1] / w['load']:.2f}x patched")
    print(f"engine speed-up: {r['step_ms'][0] / r['step_ms'][1]:.2f}x (step), "
          f"{r['reset_ms'][0] / r['reset_ms'][1]:.2f}x (reset), {r['load_ms'][0] / r['load_ms'][1]:.2f}x (load)")
    print(f"identical transcripts: {r['identical']}/{r['games']}")
    if r["identical"] != r["games"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
