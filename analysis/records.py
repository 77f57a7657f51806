"""Finding run directories on disk and reading their files (no pandas, no torch)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write under a temporary name in the same folder, then rename: a reader (or a crash) sees the
    old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _natural_key(path: Path) -> list:
    # Hydra job dirs are 0..N: sort 10 after 9.
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(path))]


def _read_json(path: Path) -> tuple[object, str | None]:
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as err:
        return None, f"{path.name} unreadable ({type(err).__name__}: {err})"


def _is_run_dir(path: Path, files: list[str], dirs: list[str]) -> bool:
    if "result.json" in files or "metrics.jsonl" in files or ".hydra" in dirs:
        return True
    if "config.json" in files:
        config, error = _read_json(path / "config.json")
        return error is not None or (isinstance(config, dict) and "method" in config)
    return False


def find_run_dirs(roots: Sequence[str | Path], skip: Iterable[Path] = ()) -> list[Path]:
    """Every run directory below the roots (not descending into runs), sorted, without repeats."""
    skip = {Path(p).resolve() for p in skip}
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"sweep folder {root} does not exist or is not a folder; pass a Hydra sweep dir "
                "such as multirun/2026-11-25/12-00-00 or the folder holding several of them")
        for dirpath, dirs, files in os.walk(root):
            here = Path(dirpath).resolve()
            if here in skip:
                dirs[:] = []
            elif _is_run_dir(here, files, dirs):
                found.add(here)
                dirs[:] = []  # checkpoints below a run may hold an HF config.json
    return sorted(found, key=_natural_key)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {"a.b": value}; lists become JSON strings so values can be compared."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else value
    return flat
