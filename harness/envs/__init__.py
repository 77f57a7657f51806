"""The environment layer: the `Environment` seam (base.py) and ALFWorld behind it (alfworld.py:
game discovery, the engine; the worker pool, experts and the generator of its offline suite).

Nothing outside this package imports alfworld or textworld.
"""

from harness.envs import alfworld  # noqa: F401  (importing registers env.name alfworld, alfworld_synth)
from harness.envs.base import Environment, Wording, get_environment, register
from harness.envs.games import (
    SHORT_NAMES,
    SPLITS,
    TASK_TYPES,
    GameDataError,
    GameInfo,
    GameList,
    discover_games,
    interleave_task_types,
    resolve_data_root,
    resolve_task_types,
)
from harness.envs.pool import EnvPool, EnvState

__all__ = [
    "SHORT_NAMES", "SPLITS", "TASK_TYPES", "EnvPool", "EnvState", "Environment", "GameDataError", "GameInfo",
    "Wording", "get_environment", "register",
    "GameList", "discover_games", "interleave_task_types", "resolve_data_root", "resolve_task_types",
]
