"""Experiment loggers: the smoke run through `python -m harness` with logger=tensorboard and
logger=wandb (offline), read back from the files they wrote and compared with metrics.jsonl."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.loop.loggers import final_fields, make_logger, numeric_fields

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "method=opd", "model.tiny.judge_examples=0"]


def _harness(run_dir: Path, *overrides: str) -> tuple[list[dict], dict]:
    """One smoke run through the real entry point; (metrics.jsonl lines, result.json)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
    done = subprocess.run([sys.executable, "-m", "harness", *SMOKE, *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return lines, json.loads((run_dir / "result.json").read_text())


def _wandb_records(path: Path):
    """The protobuf records of a .wandb file (a LevelDB-style log: 32 KiB blocks, 7-byte record
    headers of crc32 / length / type FULL=1 FIRST=2 MIDDLE=3 LAST=4, after a 7-byte file header)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, parts = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", data[:7]
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb writes 'a/b' as the nested key [a, b]


def test_numeric_fields_and_final_success_by_hand():
    line = {"step": 3, "loss": 0.5, "grad_norm": 2, "kl_student_teacher": None, "all_skipped": 0.0, "name": "x",
            "weight_raw_mean": float("nan")}
    assert numeric_fields(line) == {"loss": 0.5, "grad_norm": 2.0, "all_skipped": 0.0}
    result = {"eval": {"valid_seen": {"success": 0.25, "num_games": 4}, "valid_unseen": {"success": 0.5}},
              "teacher_eval": {"valid_seen": {"success": 1.0}}, "initial_eval": None}
    assert final_fields(result) == {"eval/valid_seen/success": 0.25, "eval/valid_unseen/success": 0.5,
                                    "teacher_eval/valid_seen/success": 1.0}


def test_missing_package_and_bad_name_fail_at_start_up(tmp_path, monkeypatch):
    settings = SimpleNamespace(name="wandb", mode="offline", project="p", entity=None, run_name=None, dir=None)
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises
    with pytest.raises(ImportError, match=r"logger=wandb needs the wandb package: pip install wandb"):
        make_logger(settings, tmp_path, {})
    with pytest.raises(ValueError, match="logger.name must be none, wandb or tensorboard"):
        make_logger(SimpleNamespace(name="mlflow"), tmp_path, {})


def test_a_logger_does_not_make_another_run():
    from harness.config import to_plain
    from harness.run import config_changes
    from tests.hydra_utils import compose_config

    old = to_plain(compose_config(["experiment=smoke"]))
    del old["logger"]  # a run recorded before the logger group existed
    new = to_plain(compose_config(["experiment=smoke", "logger=wandb", "logger.project=x"]))
    assert config_changes(old, new) == []  # the finished run stands, a checkpoint resumes
    assert config_changes(old, to_plain(compose_config(["experiment=smoke", "logger=wandb", "seed=1"]))) == ["seed"]


@pytest.mark.slow
def test_tensorboard_events_hold_the_metrics_lines(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines, result = _harness(tmp_path, "logger=tensorboard")
    assert [line["step"] for line in lines] == [0, 1]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    for line in lines:
        for key, value in numeric_fields(line).items():  # float32 in the event file
            assert scalars[key][line["step"]] == pytest.approx(value, rel=1e-6, abs=1e-6), key
    assert scalars["loss"] == {0: pytest.approx(lines[0]["loss"]), 1: pytest.approx(lines[1]["loss"])}
    assert "time_step_s" in scalars and "grad_norm" in scalars
    for split in ("valid_seen", "valid_unseen"):
        assert scalars[f"eval/{split}/success"] == {2: pytest.approx(result["eval"][split]["success"])}


@pytest.mark.slow
def test_wandb_offline_run_holds_the_metrics_lines(tmp_path):
    lines, result = _harness(tmp_path, "logger=wandb")
    assert result["config"]["logger"] == {"name": "wandb", "mode": "offline", "project": "sage-opd", "entity": None,
                                          "run_name": None, "dir": None}
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    history, summary, names = {}, {}, []
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {_key(item): json.loads(item.value_json) for item in record.history.item}
            history[row["_step"]] = row
        elif kind == "summary":
            summary |= {_key(item): json.loads(item.value_json) for item in record.summary.update}
        elif kind == "run":
            names.append(record.run.display_name)
    assert names[0] == tmp_path.name and sorted(history) == [0, 1]
    for line in lines:
        for key, value in numeric_fields(line).items():
            assert history[line["step"]][key] == pytest.approx(value), key
    assert history[0]["loss"] == lines[0]["loss"] and history[1]["loss"] == lines[1]["loss"]
    for split in ("valid_seen", "valid_unseen"):
        assert summary[f"eval/{split}/success"] == result["eval"][split]["success"]
