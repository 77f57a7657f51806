"""The README's main job: a 3-method sweep on the embedded default, then the paper table.

    python -m harness.demo [extra Hydra overrides]
runs `python -m harness -m experiment=demo method=sage,opd,no_conf` into multirun/demo/<time>/,
then the reference rows (the teacher and the warm-start student evaluated on the same games,
`mode=eval eval.eval_teacher=true` into `reference/`), and prints the main table of
`python -m analysis` on it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    sweep_dir = REPO / "multirun" / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    command = [sys.executable, "-m", "harness", "-m", "experiment=demo", "method=sage,opd,no_conf",
               f"hydra.sweep.dir={sweep_dir}", *extra]
    # the reference rows: the teacher and the untrained (warm-start) student on the same games
    reference = [sys.executable, "-m", "harness", "-m", "experiment=demo", "mode=eval", "eval.eval_teacher=true",
                 f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=reference", *extra]
    started = time.perf_counter()
    code = 0
    for what in (command, reference):
        print("$", " ".join(what), flush=True)
        returncode = subprocess.run(what, cwd=REPO).returncode  # the reference runs even if a method failed
        code = code or returncode
    print(f"sweep finished in {time.perf_counter() - started:.0f} s (exit code {code})", flush=True)
    from analysis import summarize

    print(summarize([sweep_dir]))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
