"""The harness itself on the local Slurm: the user's sweep command through hydra/launcher=slurm,
and training jobs that are requeued mid-run and still end with an uninterrupted run's result."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_fixtures import (  # noqa: F401  (slurm_cluster_fixture registers a fixture)
    SlurmCluster,
    requeue,
    sacct_states,
    slurm_cluster_fixture,
    wait_for,
)

from harness.run import run
from tests.hydra_utils import compose_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
# About 2 minutes on an idle 2-CPU node: the sweep ~50 s (it builds its own cache), the requeue
# test ~60 s. Timeouts are generous because other tests' jobs may hold the node's CPUs first.

REPO = Path(__file__).resolve().parents[1]
METHODS = ["sage", "opd", "no_conf"]
# After `scontrol requeue` a job lives on for ~5-6 s (KillWait 3 s + srun's grace): 3-6 tiny
# steps here. harness/loop/slurm.py freezes the run at the SIGTERM, so it resumes from (about) the
# checkpoint that was there when the test requeued it, and a few steps are enough.
STEPS = 6
REQUEUE_RUN = ["method=opd", "experiment=smoke", f"train.steps={STEPS}", "train.checkpoint_every=1"]
RESUMING = re.compile(r"resuming (\S+) from step-(\d+)")


def _harness(args: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    """`python -m harness ARGS` in `cwd`; sbatch passes this environment on to the jobs."""
    environ = dict(os.environ, OMP_NUM_THREADS="1", **env)
    # From another cwd Python must still find `harness` (the fixture already adds the repo).
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """The process's output, after asserting it exited 0 within `timeout_s`."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{proc.args} still running after {timeout_s} s:\n{out[-3000:]}") from None
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{out[-3000:]}"
    return out


def _job_logs(sweep_dir: Path) -> dict[str, Path]:
    """Slurm job id -> its stdout log: submitit writes `<sweep>/.submitit/<id>/<id>_0_log.out`,
    where <id> is `<array>_<task>` for an array's task and the plain job id for a lone job."""
    return {p.parent.name: p for p in sorted((sweep_dir / ".submitit").glob("*/*_0_log.out"))
            if p.name == f"{p.parent.name}_0_log.out"}


def _completed_states(job_id: str) -> list[str]:
    # A finished job can take a moment to land in the accounting database.
    return wait_for(lambda: (s := sacct_states(job_id)) and s[-1] == "COMPLETED" and s, 30,
                    f"sacct of {job_id} to show COMPLETED")


def _metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not k.startswith("time_")} for line in lines]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{STEPS}" / "model" / "model.safetensors"))


def test_slurm_sweep_of_three_methods_prepares_once(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """The README's sweep as one job array. The cache is empty, so the three jobs, started
    together, must find it through the submitting shell's SAGE_OPD_CACHE and build it once."""
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    proc = _harness(["-m", f"method={','.join(METHODS)}", "hydra/launcher=slurm", "experiment=smoke",
                     f"hydra.sweep.dir={sweep}"], cwd=REPO, SAGE_OPD_CACHE=str(cache))
    _finish(proc, 420)

    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/result.json")}
    assert sorted(records) == [f"{i}_{m}_seed0" for i, m in enumerate(METHODS)]
    for name, record in records.items():
        assert record["status"] == "complete", (name, record.get("error"))
        assert record["method"] == name.split("_", 1)[1].rsplit("_", 1)[0]
        assert set(record["eval"]) == {"valid_seen", "valid_unseen"}
        assert record["eval"]["valid_seen"]["num_games"] == 3

    # One array of three tasks, each completed once in Slurm's accounting.
    logs = _job_logs(sweep)
    array_id = next(iter(logs)).split("_")[0]
    assert sorted(logs) == [f"{array_id}_{i}" for i in range(3)], f"not one array of 3 tasks: {logs}"
    for job_id in logs:
        assert _completed_states(job_id) == ["COMPLETED"]

    # Shared preparation: one suite and one tiny pair in the fresh cache, built by one job.
    (suite,) = [p for p in (cache / "games").iterdir() if p.is_dir()]
    (teacher, pair) = sorted(p for p in (cache / "tiny").iterdir() if p.is_dir())[::-1]
    assert teacher.name.startswith("teacher-"), teacher
    assert not suite.name.startswith(".") and not pair.name.startswith("."), "a temporary dir was left"
    assert {r["models"]["student"] for r in records.values()} == {str(pair / "student")}
    assert {r["models"]["teacher"] for r in records.values()} == {str(teacher / "teacher")}
    assert {r["versions"]["suite_hash"] for r in records.values()} == {suite.name}
    for role in ("teacher", "student"):
        builders = [job_id for job_id, p in logs.items() if f"prepare: {role} (" in p.read_text()]
        assert len(builders) == 1, f"the tiny {role} was built by {builders}, not by exactly one job"


def test_requeued_training_jobs_resume_and_match_an_uninterrupted_run(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """Two single-job sweeps side by side, interrupted once their first checkpoint exists:
    - `scontrol requeue` (an admin, or Slurm preempting with requeue); this one keeps the default,
      timestamped sweep dir, which the restarted job must find again (Hydra pickles its config
      with the resolved `${now:}`);
    - SIGUSR2, what Slurm sends `signal_delay_s` before the time limit: submitit calls the
      launcher's `checkpoint` and requeues the job itself.
    Both must resume from their checkpoint and end exactly like an uninterrupted run."""
    admin_cwd, signal_sweep = tmp_path / "admin", tmp_path / "signal"
    admin_cwd.mkdir()
    launch = ["-m", *REQUEUE_RUN, "hydra/launcher=slurm"]
    procs = {"scontrol": _harness(launch, cwd=admin_cwd),
             "usr2": _harness([*launch, f"hydra.sweep.dir={signal_sweep}"], cwd=REPO)}

    def run_dir(how: str) -> Path | None:
        if how == "usr2":
            return signal_sweep / "0_opd_seed0"
        found = list(admin_cwd.glob("multirun/smoke/*/0_opd_seed0"))
        return found[0] if found else None

    def first_checkpoint(how: str) -> Path | None:
        if procs[how].poll() is not None:
            raise AssertionError(f"{how}: the sweep ended before its first checkpoint:\n{procs[how].stdout.read()}")
        path = run_dir(how)
        return path if path is not None and (path / "checkpoints" / "latest").exists() else None

    job_ids, interrupted_at = {}, {}
    pending = set(procs)
    while pending:
        how, path = wait_for(lambda: next(((h, p) for h in sorted(pending) if (p := first_checkpoint(h))), None),
                             300, f"a first checkpoint of {sorted(pending)}")
        (job_ids[how],) = _job_logs(path.parent)  # a one-job sweep is a plain job, no array
        if how == "scontrol":
            requeue(job_ids[how])
        else:
            subprocess.run(["scancel", "--signal=USR2", job_ids[how]], check=True, timeout=60)
        interrupted_at[how] = int((path / "checkpoints" / "latest").read_text().split("-")[1])
        pending.discard(how)

    # The reference, in this process, while the jobs wait to restart (same cache, same config).
    reference_dir = tmp_path / "reference"
    reference = run(compose_config(REQUEUE_RUN), reference_dir)
    assert reference["status"] == "complete"

    for how, proc in procs.items():
        _finish(proc, 300)
        path, job_id = run_dir(how), job_ids[how]
        assert _completed_states(job_id) == ["REQUEUED", "COMPLETED"], how
        log = _job_logs(path.parent)[job_id].read_text()
        assert log.count("Starting with JobEnvironment") == 2, f"{how}: expected two starts:\n{log[-3000:]}"
        resumes = RESUMING.findall(log)
        assert len(resumes) == 1, f"{how}: expected one 'resuming' line:\n{log[-3000:]}"
        resumed_dir, resumed_step = Path(resumes[0][0]), int(resumes[0][1])
        assert resumed_dir.resolve() == path.resolve(), f"{how}: the restarted job used {resumed_dir}"
        # A step may end between the test seeing a checkpoint and the signal landing; not more.
        assert interrupted_at[how] <= resumed_step <= interrupted_at[how] + 2, (how, interrupted_at[how], resumed_step)
        assert resumed_step < STEPS, f"{how}: the first start finished before it was stopped; raise STEPS"
        if how == "usr2":
            assert "this job is preempted" in log and "Calling checkpoint method" in log
        else:  # the run froze at Slurm's SIGTERM instead of training on without env workers
            assert "harness.loop.slurm: SIGTERM" in log

        result = json.loads((path / "result.json").read_text())
        assert result["status"] == "complete"
        assert result["config"] == reference["config"]  # the launcher ran the very same config
        assert result["models"]["student"] == reference["models"]["student"]
        assert _metrics(path) == _metrics(reference_dir), how
        assert [m["step"] for m in _metrics(path)] == list(range(STEPS))
        ours, theirs = _weights(path), _weights(reference_dir)
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), (how, name)
        assert result["eval"] == reference["eval"], how
