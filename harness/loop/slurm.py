"""What a run needs when it is a Slurm job started by submitit (`hydra/launcher=slurm`).

Slurm stops a job (requeue, preemption, cancel, time limit) with SIGTERM to every process of
the job, then SIGKILL after its KillWait. submitit's job process survives that SIGTERM on
purpose (it waits for SIGUSR2 to checkpoint and requeue, or for the SIGKILL), but the
processes the run started do not: the ALFWorld env workers died at once while training went
on for seconds with every episode "failed", stepping the optimizer on empty batches and
checkpointing those steps, so the requeued job resumed from a corrupted checkpoint. Found by
tests/test_slurm_harness.py, which compares a requeued run with an uninterrupted one.

The fix: in such a job, SIGTERM freezes the run (its main thread waits in the signal handler):
no further step, checkpoint or result is written, and the job still ends the way submitit
expects, by SIGKILL or by a SIGUSR2 whose handler checkpoints, requeues and exits. The run
resumes from its last checkpoint, written before the SIGTERM. (Ignoring SIGTERM in the whole
job instead would be inherited by every child and hangs multiprocessing pools, whose
`terminate()` sends SIGTERM.)
"""

from __future__ import annotations

import os
import signal
from typing import Any

from hydra.experimental.callback import Callback


def in_submitit_slurm_job() -> bool:
    """True inside a job that submitit submitted to Slurm (its sbatch script sets this)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def freeze_on_sigterm() -> None:
    """From now on SIGTERM stops this process's progress for good: it then waits for SIGKILL,
    or for SIGUSR2, whose handler (submitit's) checkpoints, requeues and exits."""

    def freeze(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not nest a second wait
        # os.write, not print: the handler may interrupt a print of the main thread (reentrancy).
        os.write(1, f"harness.loop.slurm: SIGTERM: job {os.environ.get('SLURM_JOB_ID', '?')} is being stopped; "
                    "the run stops here (it resumes from its last checkpoint when requeued)\n".encode())
        while True:
            signal.pause()  # another signal's handler runs in here; submitit's SIGUSR2 one exits

    signal.signal(signal.SIGTERM, freeze)


class SlurmJobSignals(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): in a submitit Slurm job, SIGTERM
    freezes the run before it starts; elsewhere it does nothing."""

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if in_submitit_slurm_job():
            freeze_on_sigterm()
