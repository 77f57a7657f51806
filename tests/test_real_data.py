"""Real data without surprises: skipped games are counted with their reason, evaluating the
default tiny pair on another data root builds nothing, and env=alfworld records its step cap."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.config import to_plain
from harness.envs import GameDataError, discover_games
from harness.run import run, tiny_pair_suite
from tests.hydra_utils import compose_config


def _trials(suite: Path, split: str) -> list[Path]:
    return sorted(p.parent for p in (suite / "json_2.1.1" / split).rglob("traj_data.json"))


def _copy(trial: Path, root: Path, split: str, task_dir: str | None = None) -> Path:
    """A real trial folder copied into `root` (json_2.1.1/<split>/<task dir>/<trial>/)."""
    dest = root / "json_2.1.1" / split / (task_dir or trial.parent.name) / trial.name
    shutil.copytree(trial, dest)
    return dest


def _edit_game(trial: Path, **changes) -> None:
    path = trial / "game.tw-pddl"
    game = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            del game[key]
        else:
            game[key] = value
    path.write_text(json.dumps(game))


def _data_root_with_bad_games(suite: Path, root: Path, split: str, good: int) -> list[Path]:
    """`good` playable copies of real games plus one game of each skip reason; returns the good."""
    trials = _trials(suite, split)
    kept = [_copy(t, root, split) for t in trials[:good]]
    spare = trials[good:good + 5]
    _edit_game(_copy(spare[0], root, split, "null-solvable"), solvable=None)
    _edit_game(_copy(spare[1], root, split, "no-solvable-key"), solvable=...)
    (_copy(spare[2], root, split, "truncated") / "game.tw-pddl").write_text('{"pddl_domain": "(def')
    (_copy(spare[3], root, split, "no-game") / "game.tw-pddl").unlink()
    _copy(spare[4], root, split, "pick_and_place_simple-AppleSliced-None-Fridge-1")
    return kept


def test_every_skipped_game_is_counted_with_its_reason(small_suite, tmp_path):
    kept = _data_root_with_bad_games(small_suite, tmp_path, "valid_seen", good=3)
    found = discover_games(tmp_path, "valid_seen")
    assert [Path(g.gamefile).parent for g in found.games] == kept
    assert found.skip_counts() == {"malformed": 1, "missing_game_file": 1, "movable_or_sliced": 1,
                                   "no_solvable_key": 1, "not_solvable": 1}
    assert found.summary("valid_seen") == ("games valid_seen: 3 playable, 5 skipped (1 malformed, 1 missing_game_file, "
                                           "1 movable_or_sliced, 1 no_solvable_key, 1 not_solvable)")
    # filtered by task type: every game of the other types is counted too
    first_type = found.games[0].task_type
    only = discover_games(tmp_path, "valid_seen", [first_type])
    types = {str(t.parent): json.loads(t.read_text())["task_type"] for t in tmp_path.rglob("traj_data.json")}
    other = sorted(name for name, kind in types.items() if kind != first_type and "Sliced" not in name)
    assert only.skip_counts()["task_type"] == len(other) > 0
    assert len(only.games) + len(only.skipped) == len(found.games) + len(found.skipped) == 8
    with pytest.raises(GameDataError, match=r"no-game/trial_\w+/game.tw-pddl: missing game.tw-pddl.*env.on_malformed=skip"):
        discover_games(tmp_path, "valid_seen", on_malformed="error")


def test_a_split_with_no_playable_game_says_why(small_suite, tmp_path):
    trial = _copy(_trials(small_suite, "valid_seen")[0], tmp_path, "valid_seen")
    _edit_game(trial, solvable=None)
    with pytest.raises(GameDataError, match=r"skipped: 1 not_solvable: game.tw-pddl has 'solvable' false or null"):
        discover_games(tmp_path, "valid_seen")


def test_eval_pair_comes_from_the_train_suite_not_the_eval_data(small_suite, tmp_path):
    assert tiny_pair_suite(compose_config(["experiment=smoke"]), small_suite) == small_suite  # train: its games
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "config.json").write_text(json.dumps({"env": {"data_root": str(small_suite)}}))
    cfg = compose_config(["experiment=smoke", "mode=eval", f"checkpoint={tmp_path / 'trained'}",
                          "env.data_root=/elsewhere"])
    assert tiny_pair_suite(cfg, tmp_path / "elsewhere") == small_suite  # the checkpoint run's train suite


@pytest.mark.slow
def test_eval_on_another_data_root_builds_no_new_pair(small_suite, tmp_path, monkeypatch):
    prepared = run(compose_config(["experiment=smoke", "mode=prepare"]), tmp_path / "prepare")  # cached after once
    data = tmp_path / "data"
    for split in ("valid_seen", "valid_unseen"):
        _copy(_trials(small_suite, split)[0], data, split)
        _copy(_trials(small_suite, split)[1], data, split)
    _edit_game(_copy(_trials(small_suite, "valid_seen")[2], data, "valid_seen", "null-solvable"), solvable=None)
    monkeypatch.setenv("SAGE_OPD_BUILD", "0")  # building a pair for the eval data would be an error
    lines: list[str] = []
    result = run(compose_config(["experiment=smoke", "mode=eval", f"env.data_root={data}"]), tmp_path / "eval",
                 log=lambda *a: lines.append(" ".join(map(str, a))))
    assert result["status"] == "complete" and result["method"] == "warm_start"
    assert result["models"]["tiny_keys"] == prepared["tiny_keys"]
    assert {s: m["num_games"] for s, m in result["eval"].items()} == {"valid_seen": 2, "valid_unseen": 2}
    assert result["games_skipped"] == {"valid_seen": {"not_solvable": 1}, "valid_unseen": {}}
    assert "games valid_seen: 2 playable, 1 skipped (1 not_solvable)" in lines
    assert any(line.startswith(f"mode=eval on {data}: the tiny pair of its train suite") for line in lines)


def test_alfworld_records_its_step_cap():
    cfg = compose_config(["env=alfworld"])
    assert cfg.env.max_steps == 50 and to_plain(cfg)["env"]["max_steps"] == 50  # result.json's config
    assert compose_config(["env=alfworld", "env.max_steps=30"]).env.max_steps == 30
