"""The seam between the harness and one text environment (ALFWorld now; ScienceWorld would be
one more folder under harness/envs/ that implements `Environment` and calls `register`).

The loop only sees games (`GameInfo`), states (`EnvState`, built by the pool from the dicts a
`Game` answers) and prompt text; everything engine-specific stays behind this protocol.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Wording:
    """The phrases prompts are made of (harness/agent/prompt.py renders with them)."""

    task_prefix: str
    """Starts the task line of every user message ('Your task is to: ')."""
    observation_prefix: str
    """Starts the current (and each past) observation line; the judge reads it back."""
    action_prefix: str
    """Starts each past action line of the window layout."""
    admissible_prefix: str
    """Starts the line listing the admissible actions."""
    think_action_instruction: str
    """Closes a user message in the think_action answer format (instruction-tuned LLMs)."""
    navigation_prefixes: tuple[str, ...] = ()
    """Admissible commands that move or look rather than act on an object ('go to ', 'examine ',
    'look'); `prompt.admissible_scope=interactions` leaves them out of the listed actions."""


class Game(Protocol):
    """One loaded game in an env worker; each answer is a dict with text, admissible, won, done
    (and plan: the expert's remaining commands, when loaded `with_plan`)."""

    def reset(self) -> dict: ...

    def step(self, action: str) -> dict: ...

    def close(self) -> None: ...


class Environment(Protocol):
    """What a text environment supplies: its games on disk, its engine, its task types and words."""

    name: str
    task_types: dict[int, str]
    """Task type id -> name (env.task_types accepts either, or a short name)."""
    wording: Wording

    def resolve_data_root(self, data_root: str | os.PathLike | None) -> Path:
        """The folder holding the games (env.data_root, or the environment's own default)."""
        ...

    def discover(self, root: Path, split: str, task_types, on_malformed: str):
        """The playable games of one split (a GameList: games and skipped folders with reasons)."""
        ...

    def setup_worker(self, fast_engine: bool, cache_dir: str | None = None) -> None:
        """Called once in each env worker process before any game is loaded (`cache_dir`: a
        folder the engine may keep pure results in across processes, or None)."""
        ...

    def make_game(self, gamefile: str, with_plan: bool) -> Game:
        """Load one game (in an env worker process)."""
        ...

    def split_initial(self, text: str) -> tuple[str, str]:
        """A reset's text -> (the first observation, the task sentence)."""
        ...


_REGISTRY: dict[str, Environment] = {}


def register(name: str, environment: Environment) -> None:
    """Make `environment` known as env.name=`name` (an environment may have several names)."""
    if name in _REGISTRY and _REGISTRY[name] is not environment:
        raise ValueError(f"environment {name!r} is already registered")
    _REGISTRY[name] = environment


def get_environment(name: str) -> Environment:
    """The environment registered as `name` (harness/envs/__init__.py imports each one, which
    registers it); an unknown name lists the known ones."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown environment env.name={name!r}; known: {', '.join(sorted(_REGISTRY))}.{hint}")
    return _REGISTRY[name]
