"""Env-layer figures: reset/step latency, env steps/s with 1 vs 2 worker processes (one run),
and the exploring expert's success per split and task type.

    python -m harness.bench.env [--data-root DIR] [--envs 16]
Without --data-root it uses the default generated suite (generating it if needed).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

from harness.envs import SHORT_NAMES, EnvPool, discover_games
from harness.envs.demos import play_experts


def steps_per_second(games, num_workers: int, scripts: list[list[str]]) -> tuple[float, float, float]:
    """(steps/s, mean reset latency s, mean step latency s per batched call) for fixed scripts."""
    with EnvPool(num_workers=num_workers, max_steps=100) as pool:
        pool.reset([g.gamefile for g in games])  # warm: load games and imports once
        start = time.perf_counter()
        pool.reset([g.gamefile for g in games])
        reset_s = time.perf_counter() - start
        steps, calls, start = 0, 0, time.perf_counter()
        for t in range(max(len(s) for s in scripts)):
            actions = [s[t] if t < len(s) and not pool.states[i].done else None for i, s in enumerate(scripts)]
            steps += sum(a is not None for a in actions)
            pool.step(actions)
            calls += 1
        elapsed = time.perf_counter() - start
    return steps / elapsed, reset_s / len(games), elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--envs", type=int, default=16, help="envs stepped together for the speed figures")
    parser.add_argument("--speed-only", action="store_true", help="skip the explorer's success figures")
    args = parser.parse_args()
    if args.data_root is None:
        from harness.envs.generate import SuiteSpec, ensure_suite

        args.data_root = ensure_suite(SuiteSpec())
    print(f"data root: {args.data_root}")

    print("\n== exploring expert: success per split and task type ==")
    scripts = None
    for split in ("valid_seen",) if args.speed_only else ("train", "valid_seen", "valid_unseen"):
        games = discover_games(args.data_root, split).games
        if split == "train":
            games = games[:: max(1, len(games) // 140)][:140]  # every k-th: all task types
        if args.speed_only:
            games = games[: args.envs]
        start = time.perf_counter()
        with EnvPool(num_workers=2, max_steps=30) as pool:
            episodes = play_experts(pool, games, expert="explorer")
        wall = time.perf_counter() - start
        by_type = defaultdict(list)
        for e in episodes:
            by_type[e["task_type"]].append(e["won"])
        cells = "  ".join(f"{SHORT_NAMES[t]} {100 * sum(v) / len(v):.0f}% (n={len(v)})" for t, v in sorted(by_type.items()))
        turns = sum(len(e["turns"]) for e in episodes) / len(episodes)
        won = sum(e["won"] for e in episodes)
        print(f"{split:13s} {100 * won / len(episodes):5.1f}% of {len(episodes)}  mean turns {turns:.1f}  "
              f"({wall:.0f} s)  | {cells}")
        if split == "valid_seen":
            scripts = [[t["action"] for t in e["turns"]] for e in episodes[: args.envs]]
            speed_games = games[: args.envs]

    print(f"\n== speed: {args.envs} envs in lock-step, the explorer's actions replayed ==")
    results = {w: steps_per_second(speed_games, w, scripts) for w in (1, 2)}
    for w, (sps, reset_s, step_s) in results.items():
        print(f"{w} worker(s): {sps:6.1f} env steps/s   reset {1000 * reset_s:5.0f} ms/env   "
              f"batched step call {1000 * step_s:5.0f} ms")
    print(f"ratio 2 workers / 1 worker: {results[2][0] / results[1][0]:.2f}x")


if __name__ == "__main__":
    main()
