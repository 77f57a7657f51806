"""Compose the real conf/ with Hydra's compose API (as `python -m harness` would)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from harness.config import register_configs

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def compose_config(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)
