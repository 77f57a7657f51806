"""Time the generation of the default game suite (140 seen + 134 unseen + 2000 train).

    python -m harness.bench.generate [--workers 2] [--n-train 2000]

Writes into a temporary folder (never the cache) and prints seconds, games/s and counts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from harness.envs.generate import GENERATOR_VERSION, SuiteSpec, generate_suite


def main(argv: list[str] | None = None) -> dict:
    """Generate one suite from scratch and print how long it took."""
    defaults = SuiteSpec()
    parser = argparse.ArgumentParser(prog="python -m harness.bench.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=defaults.num_workers)
    parser.add_argument("--n-train", type=int, default=defaults.n_train)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    spec = SuiteSpec(seed=args.seed, n_train=args.n_train, num_workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as out:
        start = time.perf_counter()
        summary = generate_suite(spec, out)
        seconds = time.perf_counter() - start
    total = sum(c["total"] for c in summary["counts"].values())
    print(f"generator v{GENERATOR_VERSION}, spec {spec}")
    print(f"generated and verified {total} games in {seconds:.1f} s "
          f"({total / seconds:.2f} games/s, {spec.num_workers} worker(s), {os.cpu_count()} CPUs)")
    for split, counts in summary["counts"].items():
        rooms = len(summary["templates"][split])
        print(f"  {split}: {counts['total']} games on {rooms} rooms, "
              f"{summary['rejected_draws'][split]} draws rejected by verification")
    return {"seconds": seconds, "games": total, **summary}


if __name__ == "__main__":
    main()
