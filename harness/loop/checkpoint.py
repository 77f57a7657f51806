"""Atomic training checkpoints, and resuming from them.

Each checkpoint is a new folder `checkpoints/step-<k>/` (written under a temporary name, then
renamed), after which the one-line file `checkpoints/latest` is replaced atomically to point at
it; older folders are deleted only then. A crash at any moment leaves `latest` naming a
complete checkpoint. Holds: the student (full weights or LoRA adapter), optimizer, scheduler,
RNG states, step and data position.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically: a temporary sibling, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, student, tokenizer, optimizer, scheduler, step: int, extra: dict, keep: int = 1) -> Path:
    """Write checkpoint `step` atomically and point `latest` at it."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    student.save_pretrained(str(tmp / "model"))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp / "model"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), "step": step, "extra": extra}, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_atomic(root / "latest", final.name + "\n")
    done = sorted((p for p in root.glob("step-*") if p.is_dir()), key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.pt").exists():
        raise RuntimeError(f"{pointer} names {path}, which is incomplete; delete {pointer.parent} to start over")
    return path


def load_state(path: Path) -> dict:
    """The optimizer/scheduler/RNG/step state of a checkpoint (weights are loaded by the caller)."""
    return torch.load(path / "state.pt", weights_only=False)


def load_weights_into(student, path: Path) -> None:
    """Copy a checkpoint's weights (full model or LoRA adapter) into the live student."""
    from safetensors.torch import load_file

    model_dir = path / "model"
    adapter = model_dir / "adapter_model.safetensors"
    if adapter.exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(student, load_file(str(adapter)))
        return
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weights in {model_dir}")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = student.load_state_dict(state, strict=False)
    # tied embeddings are saved once; anything else missing means a different architecture
    missing = [m for m in missing if "lm_head" not in m]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {model_dir} does not fit the student: missing {missing[:5]}, unexpected {unexpected[:5]}")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep only metrics lines of steps < `step` (a resumed run rewrites the later ones)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] < step]
    write_atomic(path, "".join(line + "\n" for line in kept))
