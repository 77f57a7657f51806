"""The ALFWorld environment layer: game discovery, the worker pool, experts, the generator.

Nothing outside this package imports alfworld or textworld.
"""

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
    "SHORT_NAMES", "SPLITS", "TASK_TYPES", "EnvPool", "EnvState", "GameDataError", "GameInfo",
    "GameList", "discover_games", "interleave_task_types", "resolve_data_root", "resolve_task_types",
]
