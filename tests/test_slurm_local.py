"""Real jobs on the local single-node Slurm through submitit: results, arrays, sacct, requeue."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from slurm_fixtures import (  # noqa: F401  (slurm_cluster_fixture registers a fixture)
    ResumableJob,
    SlurmCluster,
    read_json,
    requeue,
    sacct_states,
    slurm_cluster_fixture,
    submitit_executor,
    wait_for,
    wait_result,
)

pytestmark = pytest.mark.slurm
# Timeouts below are generous on purpose: other tests' jobs (e.g. a Hydra sweep) may hold the
# node's CPUs first. When the node is free this file takes about 30 s.

# Long enough that a job requeued at step 3 is still running when Slurm kills it: submitit
# ignores SIGTERM, so it runs on for KillWait (3 s) + 2 s before SIGKILL.
N_STEPS = 24
STEP_S = 0.4
# sum of i*i for i < 24 = 23 * 24 * 47 / 6
UNINTERRUPTED_TOTAL = 4324


def affine_in_job(x: int) -> dict[str, object]:
    """3x + 1, with the Slurm ids of the job that computed it."""
    return {
        "value": 3 * x + 1,
        "job_id": os.environ["SLURM_JOB_ID"],
        "array_task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "cpus": os.environ.get("SLURM_CPUS_PER_TASK"),
    }


def _save(path: Path, state: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # atomic: the test process polls this file


def count_slowly(progress_file: str, n_steps: int, step_s: float) -> int:
    """Sum i*i for i < n_steps, one term per step_s seconds, resuming from `progress_file`."""
    path = Path(progress_file)
    state = read_json(path) or {"step": 0, "total": 0, "starts": []}
    state["starts"].append(state["step"])  # the step each (re)start resumed from
    _save(path, state)
    while state["step"] < n_steps:
        time.sleep(step_s)
        state["total"] += state["step"] ** 2
        state["step"] += 1
        _save(path, state)
    return state["total"]


def test_submit_and_job_array(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = submitit_executor(slurm_cluster, tmp_path)
    job = executor.submit(affine_in_job, 5)
    array = executor.map_array(affine_in_job, [1, 2, 3])

    out = wait_result(job, 180)
    assert out["value"] == 16
    assert out["job_id"] == job.job_id and out["array_task"] is None
    assert out["cpus"] == "1"

    outs = [wait_result(j, 180) for j in array]
    assert [o["value"] for o in outs] == [4, 7, 10]
    assert [o["array_task"] for o in outs] == ["0", "1", "2"]
    assert {j.job_id.split("_")[0] for j in array} == {array[0].job_id.split("_")[0]}

    # Accounting: submitit reads states through sacct; a finished job can take a moment to land.
    for j in [job, *array]:
        wait_for(lambda j=j: sacct_states(j.job_id) == ["COMPLETED"], 20, f"sacct of {j.job_id}")
        assert j.get_info(mode="force").get("State") == "COMPLETED"


def test_requeued_jobs_resume_from_their_progress(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    """Two jobs side by side, interrupted after 3 steps: by `scontrol requeue` (admin or
    preemption by Slurm) and by SIGUSR2 (submitit's timeout/preemption path: checkpoint(),
    then it requeues itself). Both must resume from their saved step and finish with the
    uninterrupted result."""
    executor = submitit_executor(slurm_cluster, tmp_path / "jobs")
    runs = {}
    for how in ("scontrol", "usr2"):
        progress = tmp_path / f"progress_{how}.json"
        job = executor.submit(ResumableJob(count_slowly), str(progress), N_STEPS, STEP_S)
        runs[how] = (job, progress)

    interrupted_at = {}
    for how, (job, progress) in runs.items():
        at = wait_for(
            lambda p=progress: (s := read_json(p)) and s["step"] >= 3 and s, 180, f"{how}: 3 steps"
        )
        assert at["starts"] == [0], f"{how}: restarted before it was interrupted"
        if how == "scontrol":
            requeue(job.job_id)
        else:
            # submitit's own test hook (private): SIGTERM then SIGUSR2, as on preemption.
            job._interrupt(timeout=False)
        interrupted_at[how] = at["step"]

    for how, (job, progress) in runs.items():
        total = wait_result(job, 240)
        # Slurm's records: one run ended by the requeue, one that completed.
        states = wait_for(
            lambda j=job: (s := sacct_states(j.job_id)) and s[-1] == "COMPLETED" and s,
            30,
            f"sacct of {job.job_id} to show COMPLETED",
        )
        assert states == ["REQUEUED", "COMPLETED"], (how, states)
        state = read_json(progress)
        assert total == UNINTERRUPTED_TOTAL, how
        assert state["step"] == N_STEPS, how
        assert len(state["starts"]) == 2, f"{how}: expected one restart, got {state['starts']}"
        # Resumed from the saved step (not from zero), before the end: the first run was cut short.
        assert interrupted_at[how] <= state["starts"][1] < N_STEPS, (how, state["starts"])
