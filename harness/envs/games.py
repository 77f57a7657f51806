"""Finding ALFWorld games on disk: the real download or the generated suite, same layout.

Mirrors the filter of alfworld's `AlfredTWEnv.collect_game_files` (traj_data.json and
game.tw-pddl both present, no `movable`/`Sliced` in the path, a known task type,
`"solvable": true`) without importing the engine, so the main process stays light.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

TASK_TYPES: dict[int, str] = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}
SHORT_NAMES: dict[str, str] = {
    "pick_and_place_simple": "Pick",
    "look_at_obj_in_light": "Look",
    "pick_clean_then_place_in_recep": "Clean",
    "pick_heat_then_place_in_recep": "Heat",
    "pick_cool_then_place_in_recep": "Cool",
    "pick_two_obj_and_place": "Pick2",
}
SPLITS = ("train", "valid_seen", "valid_unseen")
DATA_VERSION_DIR = "json_2.1.1"

GENERATE_HINT = (
    "To use the real benchmark, download it with `alfworld-download` on a machine with internet "
    "and point ALFWORLD_DATA at the folder that contains json_2.1.1/ (or set env.data_root). "
    "To use the offline suite, leave env=alfworld_synth (the default), or generate it with "
    "`python -m harness.envs.generate --out DIR` and set env.data_root=DIR."
)


class GameDataError(ValueError):
    """A data root, split or game file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class GameInfo:
    """One playable game: its engine file and what the evaluator groups it by."""

    gamefile: str
    task_type: str
    split: str
    goal_params: tuple[tuple[str, str], ...] = ()  # sorted pddl_params items (object_target, ...)

    @property
    def params(self) -> dict[str, str]:
        return dict(self.goal_params)


SKIP_REASONS: dict[str, str] = {  # why a trial folder is not played; ALFWorld's filter drops each too
    "movable_or_sliced": "path holds movable/Sliced (ALFWorld does not support them)",
    "task_type": "task type not in env.task_types",
    "missing_game_file": "no game.tw-pddl next to traj_data.json",
    "malformed": "traj_data.json or game.tw-pddl unreadable or incomplete",
    "no_solvable_key": "game.tw-pddl has no 'solvable' key",
    "not_solvable": "game.tw-pddl has 'solvable' false or null",
}
ERROR_REASONS = ("missing_game_file", "malformed")  # raise under env.on_malformed=error


class Skipped(NamedTuple):
    """One trial folder that is not played."""

    path: str  # the trial folder
    detail: str  # what was wrong, naming the file
    reason: str  # a key of SKIP_REASONS


@dataclass
class GameList:
    """Games found in one split, plus the files that were skipped and why."""

    games: list[GameInfo] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def skip_counts(self) -> dict[str, int]:
        """{reason: count} of the skipped trial folders (reasons of SKIP_REASONS)."""
        counts: dict[str, int] = {}
        for skipped in self.skipped:
            counts[skipped.reason] = counts.get(skipped.reason, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self, split: str) -> str:
        """One log line: games found and skipped per reason."""
        counts = self.skip_counts()
        shown = ", ".join(f"{n} {reason}" for reason, n in counts.items())
        return f"games {split}: {len(self.games)} playable" + (f", {sum(counts.values())} skipped ({shown})" if counts else "")


def object_and_receptacle_words() -> list[str]:
    """Every object and receptacle class name as the game prints it (`sinkbasin`, `desklamp`)."""
    from alfworld.gen import constants  # lazy: discovery itself never loads the engine

    names = set(constants.OBJECTS) | set(constants.RECEPTACLES) | set(constants.OBJECTS_SINGULAR)
    return sorted({name.lower() for name in names})


def resolve_task_types(task_types: list[str | int] | None) -> list[str]:
    """Names or ALFWorld ids (1-6) -> task type names; None means all six."""
    if not task_types:
        return list(TASK_TYPES.values())
    names = []
    for t in task_types:
        if isinstance(t, int) or (isinstance(t, str) and t.isdigit()):
            if int(t) not in TASK_TYPES:
                raise GameDataError(f"Unknown task type id {t!r}: ids are 1-6 ({TASK_TYPES}).")
            names.append(TASK_TYPES[int(t)])
        else:
            by_short = {v.lower(): k for k, v in SHORT_NAMES.items()}
            name = by_short.get(str(t).lower(), str(t))
            if name not in SHORT_NAMES:
                raise GameDataError(
                    f"Unknown task type {t!r}. Known: {', '.join(TASK_TYPES.values())} "
                    f"(or their short names {', '.join(SHORT_NAMES.values())}, or ids 1-6)."
                )
            names.append(name)
    return names


def resolve_data_root(data_root: str | os.PathLike | None) -> Path:
    """The folder holding json_2.1.1/: the argument, else $ALFWORLD_DATA; checked."""
    source = "env.data_root"
    if data_root in (None, ""):
        data_root, source = os.environ.get("ALFWORLD_DATA"), "$ALFWORLD_DATA"
    if not data_root:
        raise GameDataError(f"No ALFWorld data root given (env.data_root and $ALFWORLD_DATA are unset). {GENERATE_HINT}")
    root = Path(data_root).expanduser()
    if root.name == DATA_VERSION_DIR:
        root = root.parent
    if not (root / DATA_VERSION_DIR).is_dir():
        raise GameDataError(
            f"ALFWorld data root {str(root)!r} (from {source}) has no {DATA_VERSION_DIR}/ folder. {GENERATE_HINT}"
        )
    return root


def _read_game(trial_dir: Path, split: str, wanted: set[str], name: str) -> GameInfo | tuple[str, str]:
    """A GameInfo, or (reason, detail) when skipped, checked in the order of AlfredTWEnv;
    `name` is the folder's path under the split (the data root's own path may say anything)."""
    traj_path, game_path = trial_dir / "traj_data.json", trial_dir / "game.tw-pddl"
    if "movable" in name or "Sliced" in name:
        return "movable_or_sliced", str(trial_dir)
    try:
        traj = json.loads(traj_path.read_text())
        task_type = traj["task_type"]
        params = traj.get("pddl_params", {})
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        return "malformed", f"{traj_path}: malformed traj_data.json ({type(err).__name__}: {err})"
    if task_type not in wanted:
        return "task_type", str(task_type)
    if not game_path.exists():
        return "missing_game_file", f"{game_path}: missing game.tw-pddl next to traj_data.json"
    try:
        game = json.loads(game_path.read_text())
        for key in ("pddl_domain", "grammar", "pddl_problem"):
            if not isinstance(game.get(key), str) or not game[key]:
                raise KeyError(key)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        return "malformed", f"{game_path}: malformed game file ({type(err).__name__}: {err})"
    if "solvable" not in game:
        return "no_solvable_key", str(game_path)
    if not game["solvable"]:
        return "not_solvable", f"{game_path}: solvable is {game['solvable']!r}"
    items = tuple(sorted((str(k), str(v)) for k, v in params.items()))
    return GameInfo(str(game_path), task_type, split, items)


def discover_games(
    data_root: str | os.PathLike | None,
    split: str,
    task_types: list[str | int] | None = None,
    on_malformed: str = "skip",
) -> GameList:
    """All playable games of one split, sorted by path (a stable order for seeds).

    Every skipped trial folder is kept in `skipped` with its reason (SKIP_REASONS).
    on_malformed: a malformed or missing file is "skip"ped (counted) or an "error" naming it.
    """
    if split not in SPLITS:
        raise GameDataError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    if on_malformed not in ("skip", "error"):
        raise GameDataError(f"on_malformed must be 'skip' or 'error', not {on_malformed!r}.")
    root = resolve_data_root(data_root)
    wanted = set(resolve_task_types(task_types))
    split_dir = root / DATA_VERSION_DIR / split
    found = GameList()
    for traj_path in sorted(split_dir.rglob("traj_data.json")):
        trial_dir = traj_path.parent
        outcome = _read_game(trial_dir, split, wanted, str(trial_dir.relative_to(split_dir)))
        if isinstance(outcome, GameInfo):
            found.games.append(outcome)
            continue
        reason, detail = outcome
        if reason in ERROR_REASONS and on_malformed == "error":
            raise GameDataError(f"{detail}. Fix or delete it, or set env.on_malformed=skip.")
        found.skipped.append(Skipped(str(trial_dir), detail, reason))
    if not found.games:
        counts = found.skip_counts()
        shown = "; ".join(f"{n} {reason}: {SKIP_REASONS[reason]}" for reason, n in counts.items()) or "no trial folders"
        raise GameDataError(
            f"No playable games of task types {sorted(wanted)} in {split_dir} (skipped: {shown}). {GENERATE_HINT}"
        )
    return found


def interleave_task_types(games: list[GameInfo]) -> list[GameInfo]:
    """Games in round-robin order over task types (each type in its own order), so that any
    prefix (a held-out set, a few warm-start demonstrations, a reduced eval set) holds every
    type in equal shares instead of the first type of the path order only."""
    by_type: dict[str, list[GameInfo]] = {}
    for game in games:
        by_type.setdefault(game.task_type, []).append(game)
    order: list[GameInfo] = []
    for k in range(max((len(b) for b in by_type.values()), default=0)):
        order += [bucket[k] for bucket in by_type.values() if k < len(bucket)]
    return order
