"""Pytest fixture and helpers for the real single-node Slurm of scripts/slurm_local.sh.

In a test module:

    from slurm_fixtures import slurm_cluster_fixture  # noqa: F401  (registers `slurm_cluster`)

    @pytest.mark.slurm
    def test_x(slurm_cluster, tmp_path):
        executor = submitit_executor(slurm_cluster, tmp_path)

The fixture starts the cluster if it is not running and leaves it running afterwards (other
pytest sessions on the same machine may be using it; `scripts/slurm_local.sh stop` stops it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import submitit

REPO_DIR = Path(__file__).resolve().parents[1]
SCRIPT = REPO_DIR / "scripts" / "slurm_local.sh"
TESTS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SlurmCluster:
    """What a test needs to submit to the local cluster."""

    partition: str
    cpus: int
    slurm_conf: Path
    log_dir: Path


def _script(action: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout_s
    )


def _slurm_conf_path() -> Path:
    out = _script("env", 10).stdout.strip()  # "export SLURM_CONF=/path/slurm.conf"
    return Path(out.split("=", 1)[1])


def start_local_slurm() -> SlurmCluster:
    """Install (as root, if missing) and start the local cluster; return how to reach it."""
    is_root = os.geteuid() == 0
    if shutil.which("slurmctld") is None:
        if not is_root:
            pytest.skip(
                "Slurm is not installed and this is not root: run "
                "'sudo bash scripts/slurm_local.sh install && sudo bash scripts/slurm_local.sh start'"
            )
        done = _script("install", 900)
        if done.returncode != 0:
            pytest.fail(f"scripts/slurm_local.sh install failed:\n{done.stdout}\n{done.stderr}")
    if is_root:
        done = _script("start", 300)
        if done.returncode != 0:
            pytest.fail(f"scripts/slurm_local.sh start failed:\n{done.stdout}\n{done.stderr}")
    else:
        done = _script("status", 30)
        if done.returncode != 0:
            pytest.fail(
                "the local Slurm is not running and only root can start it: "
                f"sudo bash scripts/slurm_local.sh start\n{done.stdout}"
            )
    conf = _slurm_conf_path()
    # Client commands (sbatch, sacct) need the config even if /etc/slurm/slurm.conf is foreign.
    os.environ["SLURM_CONF"] = str(conf)
    line = _check(["sinfo", "-h", "-o", "%P|%c"]).splitlines()
    default = [row for row in line if row.split("|")[0].endswith("*")] or line
    partition, cpus = default[0].split("|")
    return SlurmCluster(
        partition=partition.rstrip("*"),
        cpus=int(cpus),
        slurm_conf=conf,
        log_dir=conf.parent.parent / "log",
    )


@pytest.fixture(scope="session", name="slurm_cluster")
def slurm_cluster_fixture() -> Iterator[SlurmCluster]:
    """The local Slurm, started if needed; jobs can import test modules by name."""
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONPATH")}
    cluster = start_local_slurm()
    # submitit pickles functions defined in test modules by reference ("test_x.fn"); sbatch
    # exports this environment to the job, whose Python must then find the tests folder.
    extra = [str(TESTS_DIR), str(REPO_DIR)]
    os.environ["PYTHONPATH"] = os.pathsep.join(extra + [p for p in [saved["PYTHONPATH"]] if p])
    try:
        yield cluster
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def submitit_executor(cluster: SlurmCluster, folder: Path, **params: Any) -> submitit.AutoExecutor:
    """A submitit executor for the local cluster: 1 CPU, 1 GB, 10 min unless overridden."""
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    defaults: dict[str, Any] = dict(
        slurm_partition=cluster.partition, cpus_per_task=1, mem_gb=1, timeout_min=10
    )
    executor.update_parameters(**{**defaults, **params})
    return executor


class ResumableJob(submitit.helpers.Checkpointable):
    """Run `fn(*args, **kwargs)` as a Slurm job that survives requeues.

    Contract: `fn` saves its progress in files (e.g. checkpoints in its run dir) and, when it
    starts, resumes from them. On timeout/preemption (SIGUSR2) submitit calls `checkpoint`,
    which resubmits this same call and requeues the job; after a plain `scontrol requeue` the
    original pickled call runs again. Either way `fn` starts over and must pick up its files,
    which is how a training loop resumes from its last checkpoint.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _check(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.2) -> Any:
    """Poll `predicate` until it returns a truthy value; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def job_report(job: submitit.Job[Any]) -> str:
    """State, sacct records and log tails of a job, for assertion messages."""
    parts = [f"job {job.job_id}: {sacct_states(job.job_id)}"]
    for name, text in (("stdout", job.stdout()), ("stderr", job.stderr())):
        parts.append(f"--- {name} (tail) ---\n{(text or '')[-2000:]}")
    return "\n".join(parts)


def wait_result(job: submitit.Job[Any], timeout_s: float) -> Any:
    """The job's result, or an AssertionError with its state and logs after `timeout_s`."""
    try:
        wait_for(lambda: job.done(force_check=False), timeout_s, f"job {job.job_id}", 0.5)
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{job_report(job)}") from None
    return job.result()


def requeue(job_id: str) -> None:
    """`scontrol requeue JOB`: Slurm kills the running job and queues it again under the same id."""
    _check(["scontrol", "requeue", job_id])


def sacct_states(job_id: str) -> list[str]:
    """Every accounting record of a job allocation, oldest first (a requeue adds one)."""
    out = _check(["sacct", "-j", job_id, "-X", "-n", "-P", "--duplicates", "-o", "State"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None while it does not exist yet."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
