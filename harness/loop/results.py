"""Run records: config.json at the start, result.json (atomic) at the end (analysis/RUN_RECORD.md)."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from harness.loop.checkpoint import write_atomic


def versions(suite_hash: str | None = None) -> dict:
    """Versions that change numbers: packages, the game data, the harness itself."""
    found = {}
    for key, package in (("alfworld", "alfworld"), ("textworld", "textworld"), ("torch", "torch"),
                         ("transformers", "transformers"), ("peft", "peft"), ("harness", "sage-opd-harness")):
        try:
            found[key] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[key] = None
    found["python"] = platform.python_version()
    found["suite_hash"] = suite_hash
    return found


def write_json(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def write_result(run_dir: Path, *, status: str, method: str, seed: int, verifier_free: bool, config: dict,
                 versions_: dict, evaluation: dict | None, wall_time_s: float, error: str | None = None,
                 extra: dict | None = None) -> Path:
    """The run's result.json, written atomically; `status` is complete or failed."""
    record = {"status": status, "error": error, "method": method, "seed": seed, "verifier_free": verifier_free,
              "wall_time_s": wall_time_s, "config": config, "versions": versions_, "eval": evaluation or {}}
    record |= extra or {}
    path = Path(run_dir) / "result.json"
    write_json(path, record)
    return path
