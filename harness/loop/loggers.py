"""Experiment loggers (logger=none | wandb | tensorboard): copies of the run record, never its source.

metrics.jsonl and result.json stay the source of truth; a logger receives every numeric field
of each metrics.jsonl line (at that line's `step`) and the final success per split.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

FINAL_SECTIONS = ("eval", "teacher_eval", "initial_eval")  # result.json keys holding {split: metrics}
INSTALL_HINT = "pip install {package}  (or pip install -e '.[loggers]')"


def numeric_fields(line: dict) -> dict[str, float]:
    """The numeric fields of a metrics line, `step` excepted (it is the x axis); None is left out."""
    return {k: float(v) for k, v in line.items()
            if k != "step" and isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))}


def final_fields(result: dict) -> dict[str, float]:
    """{'eval/valid_seen/success': 0.25, ...} from a result.json record."""
    out = {}
    for section in FINAL_SECTIONS:
        for split, metrics in (result.get(section) or {}).items():
            if isinstance(metrics, dict) and isinstance(metrics.get("success"), int | float):
                out[f"{section}/{split}/success"] = float(metrics["success"])
    return out


class NoLogger:
    """logger=none: metrics.jsonl and result.json only."""

    def log_step(self, line: dict) -> None:
        pass

    def log_final(self, result: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardLogger(NoLogger):
    """Scalars in <run dir>/tensorboard (torch.utils.tensorboard; needs the tensorboard package)."""

    def __init__(self, log_dir: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError(f"logger=tensorboard needs the tensorboard package: {INSTALL_HINT.format(package='tensorboard')}") from err
        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```")
        self.last_step = 0

    def log_step(self, line: dict) -> None:
        self.last_step = int(line["step"])
        for key, value in numeric_fields(line).items():
            self.writer.add_scalar(key, value, self.last_step)
        self.writer.flush()

    def log_final(self, result: dict) -> None:
        steps = (result.get("config") or {}).get("train", {}).get("steps", self.last_step)
        for key, value in final_fields(result).items():
            self.writer.add_scalar(key, value, steps)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger(NoLogger):
    """A Weights & Biases run; mode=offline (the default) writes <dir>/wandb/offline-run-* for `wandb sync`."""

    def __init__(self, settings, run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError as err:
            raise ImportError(f"logger=wandb needs the wandb package: {INSTALL_HINT.format(package='wandb')}") from err
        if settings.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, not {settings.mode!r}")
        out = Path(settings.dir).expanduser() if settings.dir else run_dir
        out.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=settings.project, entity=settings.entity, name=settings.run_name or run_dir.name,
                              group=config.get("experiment"), dir=str(out), mode=settings.mode, config=config,
                              settings=wandb.Settings(console="off", silent=True))

    def log_step(self, line: dict) -> None:
        self.run.log(numeric_fields(line), step=int(line["step"]))

    def log_final(self, result: dict) -> None:
        for key, value in final_fields(result).items():
            self.run.summary[key] = value

    def close(self) -> None:
        self.run.finish()


def make_logger(settings, run_dir: str | Path, config: dict) -> NoLogger:
    """The logger of `settings` (cfg.logger); a missing package fails here, before any work."""
    run_dir = Path(run_dir)
    if settings.name == "none":
        return NoLogger()
    if settings.name == "tensorboard":
        return TensorBoardLogger(Path(settings.dir).expanduser() if settings.dir else run_dir / "tensorboard", config)
    if settings.name == "wandb":
        return WandbLogger(settings, run_dir, config)
    raise ValueError(f"logger.name must be none, wandb or tensorboard (logger=NAME), not {settings.name!r}")
