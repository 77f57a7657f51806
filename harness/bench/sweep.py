"""Wall time of the 3-method sweep: the basic launcher vs the local Slurm, measured in one run.

    python -m harness.bench.sweep [--experiment smoke] [--methods sage,opd,no_conf] [--repeats 1]

The basic launcher runs the sweep's runs one after another in one process; hydra/launcher=slurm
submits one job array (1 CPU per job, so as many jobs at once as the node has CPUs; each job
starts its own Python). The shared preparation (games, tiny models) is built FIRST, so that
neither side pays for it. Both sweeps are the exact user command (`python -m harness -m ...`).
Needs the local Slurm: `sudo bash scripts/slurm_local.sh start`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _harness(args: list[str], env: dict[str, str]) -> float:
    """Run `python -m harness ARGS` from the repo; its wall time in seconds (raises on failure)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"python -m harness {' '.join(args)} failed ({done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def _check_results(sweep_dir: Path, methods: list[str]) -> list[float]:
    """Each run's own wall time (result.json), after checking that every run completed."""
    records = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/result.json"))]
    found = sorted(r["method"] for r in records if r["status"] == "complete")
    if found != sorted(methods):
        raise RuntimeError(f"{sweep_dir}: complete runs for {found}, expected {sorted(methods)}")
    return [r["wall_time_s"] for r in records]


def slurm_node() -> str:
    """'<partition>: <cpus> CPUs' of the default partition, or a SystemExit saying how to start it."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %c %T"], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as err:
        raise SystemExit(f"no Slurm reachable ({err}); start the local one with: "
                         "sudo bash scripts/slurm_local.sh start") from None
    return f"partition {out[0].rstrip('*')}: {out[1]} CPUs ({out[2]})"


def _queue_length() -> int:
    """Jobs in the Slurm queue (other users' jobs would share the node with the sweep)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    return len(out.split())


def _job_timeline(sweep_dir: Path) -> str:
    """'; jobs (start after submit / elapsed, s): ...' from Slurm's accounting of the array."""
    from datetime import datetime

    ids = sorted(p.name.split("_")[0] for p in (sweep_dir / ".submitit").glob("*_*") if p.is_dir())
    if not ids:
        return ""
    time.sleep(2)  # a finished job takes a moment to reach the accounting database
    out = subprocess.run(["sacct", "-j", ids[0], "-X", "-n", "-P", "-o", "JobID,Submit,Start,End"],
                         capture_output=True, text=True, timeout=30).stdout
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 3]
    try:
        stamps = [(job, *(datetime.fromisoformat(t) for t in times)) for job, *times in rows]
    except ValueError:  # "Unknown" while a record is incomplete
        return ""
    return "; jobs (start after submit / elapsed, s): " + ", ".join(
        f"{job} {(start - submit).total_seconds():.0f}/{(end - start).total_seconds():.0f}"
        for job, submit, start, end in stamps)


def main(argv: list[str] | None = None) -> dict:
    """Warm up, time both launchers, print the table; returns the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="smoke")
    parser.add_argument("--methods", default="sage,opd,no_conf")
    parser.add_argument("--out", default=None, help="sweep dirs go here (default: a temporary dir)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both sides, e.g. train.steps=20")
    parser.add_argument("--repeats", type=int, default=1, help="alternate basic/slurm this many times; medians")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of the basic launcher's process (Slurm jobs get their cpus_per_task)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    out = Path(args.out or tempfile.mkdtemp(prefix="sage-opd-bench-sweep-"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print(f"slurm: {slurm_node()}; queue: {_queue_length()} job(s) before starting")
    print(f"cache: {os.environ.get('SAGE_OPD_CACHE', '~/.cache/sage-opd (default)')}; sweep dirs under {out}")
    print(f"load average before: {os.getloadavg()[0]:.2f} (the machine may be shared)")

    warm = _harness([f"experiment={args.experiment}", f"method={methods[0]}", *args.overrides, "mode=prepare",
                     f"hydra.run.dir={out / 'warmup'}"], env)
    print(f"warm-up (games + tiny models, built or found in the cache): {warm:.1f} s")

    sweep = ["-m", f"method={args.methods}", f"experiment={args.experiment}", *args.overrides]
    walls: dict[str, list[float]] = {"basic": [], "slurm": []}
    runs: dict[str, list[float]] = {"basic": [], "slurm": []}
    for r in range(args.repeats):
        for side, extra in (("basic", []), ("slurm", ["hydra/launcher=slurm"])):
            sweep_dir = out / f"{side}-{r}"
            walls[side].append(_harness([*sweep, *extra, f"hydra.sweep.dir={sweep_dir}"], env))
            runs[side].append(sum(_check_results(sweep_dir, methods)))
            print(f"  {side} #{r}: {walls[side][-1]:.1f} s{_job_timeline(sweep_dir) if side == 'slurm' else ''}")
    basic, slurm = statistics.median(walls["basic"]), statistics.median(walls["slurm"])

    print(f"\n== {len(methods)}-method '{args.experiment}' sweep ({args.methods}), wall time"
          f"{f' (median of {args.repeats})' if args.repeats > 1 else ''} ==")
    print("| launcher | wall (s) | sum of the runs' own time (s) |")
    print("| --- | --- | --- |")
    print(f"| basic (sequential, one process) | {basic:.1f} | {statistics.median(runs['basic']):.1f} |")
    print(f"| local Slurm (job array, 1 CPU/job) | {slurm:.1f} | {statistics.median(runs['slurm']):.1f} |")
    print(f"slurm / basic = {slurm / basic:.2f}x the wall time (basic / slurm = {basic / slurm:.2f}x speed-up)")
    return {"warmup_s": warm, "basic_s": walls["basic"], "slurm_s": walls["slurm"], "runs_s": runs}


if __name__ == "__main__":
    main()
