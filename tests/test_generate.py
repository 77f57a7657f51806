"""The offline game generator, checked against the real engine (alfworld's own AlfredTWEnv).

conftest.py points ALFWORLD_DATA at a harmless folder before anything imports alfworld.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.envs import generate, pddl_writer, scenes
from harness.envs.generate import SuiteSpec, ensure_suite, generate_suite, suite_hash

SMALL = SuiteSpec(seed=3, n_train=8, n_valid_seen=6, n_valid_unseen=6, num_workers=2)
SPLITS = ("train", "valid_seen", "valid_unseen")
TASKS = sorted(scenes.ACTION_SET) + ["look_at_obj_in_light", "pick_and_place_simple",
                                     "pick_two_obj_and_place"]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("suite")
    generate_suite(SMALL, root)
    return root


def games(root: Path, split: str) -> list[Path]:
    return sorted(p.parent for p in (root / "json_2.1.1" / split).glob("*/*/game.tw-pddl"))


def traj(game_dir: Path) -> dict:
    return json.loads((game_dir / "traj_data.json").read_text())


def file_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_hand_checked_pieces():
    # ALFRED's id escaping, by hand: - -> _minus_, | -> _bar_, + -> _plus_, . -> _dot_
    assert (pddl_writer.escape("Sink|-01.90|+00.97|-01.50|SinkBasin")
            == "Sink_bar__minus_01_dot_90_bar__plus_00_dot_97_bar__minus_01_dot_50_bar_SinkBasin")
    # pose (x=0.0, z=-1.25, rotation 180, horizon 30) -> grid 0.25: x 0, z -5, rotation 2
    assert scenes._location([0.0, -1.25, 180, 30]) == "loc|0|-5|2|30"
    assert scenes._coord(0.0) == "00.00" and scenes._coord(-2.2) == "-02.20"
    # 8 games over 6 types: two types get 2 games, four get 1
    assert sorted(Counter(generate._task_sequence(SMALL, "train", 8)).values()) == [1, 1, 1, 1, 2, 2]


def test_templates_have_their_appliances_and_size():
    pools = generate.template_pools(8)
    assert {t.scene_num for t in pools["train"]}.isdisjoint({t.scene_num for t in pools["valid_unseen"]})
    for template in pools["train"] + pools["valid_unseen"]:
        classes = set(template.receptacle_classes)
        assert 2 <= len(template.receptacles) <= 8
        if template.kind == "Kitchen":
            assert {"Fridge", "Microwave", "SinkBasin"} <= classes
        if template.lamp:
            assert template.lamp[1] in {r.rid for r in template.receptacles}
        assert template.start_loc not in {r.loc for r in template.receptacles}
    # every task type has rooms in both pools
    for pool in pools.values():
        for task in TASKS:
            assert any(scenes.goal_candidates(t, task) for t in pool), task


def test_counts_balance_and_layout(suite):
    summary = json.loads((suite / "suite.json").read_text())
    wanted = {"train": 8, "valid_seen": 6, "valid_unseen": 6}
    for split, n in wanted.items():
        found = games(suite, split)
        assert len(found) == n == summary["counts"][split]["total"]
        per_type = Counter(traj(g)["task_type"] for g in found)
        assert set(per_type.values()) <= {n // 6, n // 6 + 1} and sum(per_type.values()) == n
        for game in found:
            data = traj(game)
            task_dir = game.parent.name
            params = data["pddl_params"]
            recep = params["parent_target"] or params["toggle_target"]
            assert task_dir == f"{data['task_type']}-{params['object_target']}-None-{recep}-{data['scene']['scene_num']}"
            assert "movable" not in str(game) and "Sliced" not in str(game)
            game_file = json.loads((game / "game.tw-pddl").read_text())
            assert game_file["solvable"] is True and game_file["walkthrough"]
            sentence = data["turk_annotations"]["anns"][0]["task_desc"]
            assert f"Your task is to: {sentence}." in game_file["grammar"]
            assert game_file["pddl_problem"] == (game / "initial_state.pddl").read_text()
    assert summary["hash"] == suite_hash(SMALL)


def test_targets_and_appliances_present(suite):
    needs = {"pick_clean_then_place_in_recep": "SinkBasin", "pick_heat_then_place_in_recep": "Microwave",
             "pick_cool_then_place_in_recep": "Fridge"}
    for split in SPLITS:
        for game in games(suite, split):
            data, problem = traj(game), (game / "initial_state.pddl").read_text()
            obj = data["pddl_params"]["object_target"]
            instances = len(re.findall(rf"\(objectType \S+ {obj}Type\)", problem))
            assert instances >= (2 if data["task_type"] == "pick_two_obj_and_place" else 1)
            if data["task_type"] in needs:
                assert f"{needs[data['task_type']]}Type)" in problem
            if data["task_type"] == "look_at_obj_in_light":
                lamp = data["pddl_params"]["toggle_target"]
                assert re.search(rf"\(toggleable {lamp}_bar_\S+\)", problem)


def test_template_splits(suite):
    used = {split: {traj(g)["scene"]["scene_num"] for g in games(suite, split)} for split in SPLITS}
    assert used["valid_unseen"].isdisjoint(used["train"])
    assert used["valid_seen"] <= used["train"]
    body = {split: {(g / "initial_state.pddl").read_text().split("\n", 1)[1] for g in games(suite, split)}
            for split in SPLITS}
    assert body["valid_seen"].isdisjoint(body["train"])  # same room, never the same game


def test_verifier_rejects_what_cannot_be_won():
    template = scenes.load_template(7, 8)  # a kitchen
    draw = scenes.draw_game(template, "pick_heat_then_place_in_recep", 2, random.Random(0))
    problem = pddl_writer.problem_text(draw, template, "plan_check")
    target = pddl_writer.escape(next(p.oid for p in draw.placements if p.cls == draw.object_target))
    parent = pddl_writer.escape(next(r.rid for r in template.receptacles if r.cls == draw.parent_target))
    no_microwave = problem.replace("(heatable ", "(sliceable ")  # nothing can be heated
    already_won = problem.replace("(:init", f"(:init\n(isHot {target})\n(inReceptacle {target} {parent})")
    results = generate._verify_here([(0, problem), (1, no_microwave), (2, already_won)])
    (_, walkthrough, _), (_, none1, why1), (_, none2, why2) = results
    assert walkthrough[-1].startswith(f"move {draw.object_target.lower()} ")
    assert any(step.startswith("heat ") for step in walkthrough)
    assert none1 is None and why1  # the translator finds the goal unreachable
    assert none2 is None and "already satisfied" in why2


def _alfred_config(root: Path) -> dict:
    return {
        "dataset": {"data_path": str(root / "json_2.1.1" / "train"),
                    "eval_id_data_path": str(root / "json_2.1.1" / "valid_seen"),
                    "eval_ood_data_path": str(root / "json_2.1.1" / "valid_unseen"),
                    "num_train_games": -1, "num_eval_games": -1},
        "env": {"task_types": [1, 2, 3, 4, 5, 6], "expert_type": "handcoded",
                "goal_desc_human_anns_prob": 0.0, "domain_randomization": False},
        "general": {"training_method": "dagger"},
        "dagger": {"training": {"max_nb_steps_per_episode": 50}},
    }


def test_every_game_wins_through_alfred_tw_env(suite):
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    won_types: Counter = Counter()
    for mode in ("eval_in_distribution", "eval_out_of_distribution", "train"):
        alfred = AlfredTWEnv(_alfred_config(suite), train_eval=mode)
        # train mode wraps the handcoded expert, which reads traj_data.json: that is checked too
        env = alfred.init_env(batch_size=1)
        played = set()
        for _ in range(alfred.num_games):
            obs, infos = env.reset()
            gamefile = infos["extra.gamefile"][0]
            assert not infos["won"][0]
            assert obs[0].startswith("-= Welcome to TextWorld, ALFRED! =-")
            for command in json.loads(Path(gamefile).read_text())["walkthrough"]:
                obs, _, dones, infos = env.step([command])
                assert obs[0] != "Nothing happens.", (gamefile, command)
            assert infos["won"][0] and dones[0], gamefile
            played.add(gamefile)
            won_types[traj(Path(gamefile).parent)["task_type"]] += 1
        env.close()
        assert len(played) == alfred.num_games == {"train": 8}.get(mode, 6)
    assert sorted(won_types) == sorted(TASKS) and sum(won_types.values()) == 20


def test_same_inputs_same_bytes(suite, tmp_path):
    again = SuiteSpec(**{**SMALL.hashed_fields(), "num_workers": 0})  # in-process this time
    assert suite_hash(again) == suite_hash(SMALL)
    generate_suite(again, tmp_path)
    assert file_tree(tmp_path) == file_tree(suite)
    assert suite_hash(SuiteSpec(seed=4)) != suite_hash(SuiteSpec(seed=3))
    assert suite_hash(SuiteSpec(distractors=2)) != suite_hash(SuiteSpec(distractors=3))


def _ensure(cache_root: str) -> str:
    spec = SuiteSpec(seed=1, n_train=6, n_valid_seen=1, n_valid_unseen=1, num_workers=0)
    return str(ensure_suite(spec, cache_root))


def test_concurrent_ensure_suite_gives_one_complete_suite(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        roots = pool.map(_ensure, [str(tmp_path)] * 2)
    assert roots[0] == roots[1]
    root = Path(roots[0])
    assert root.parent == tmp_path / "games"
    assert [p.name for p in (tmp_path / "games").iterdir() if not p.name.endswith(".lock")] == [root.name]
    summary = json.loads((root / "suite.json").read_text())
    assert {s: summary["counts"][s]["total"] for s in SPLITS} == {"train": 6, "valid_seen": 1, "valid_unseen": 1}
    assert sum(len(games(root, s)) for s in SPLITS) == 8
    stamp = (root / "suite.json").stat().st_mtime_ns
    assert _ensure(str(tmp_path)) == str(root)  # reused, not regenerated
    assert (root / "suite.json").stat().st_mtime_ns == stamp


def test_cli_writes_exactly_there(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "harness.envs.generate", "--out", str(out), "--seed", "5", "--n-train", "6",
         "--n-valid-seen", "0", "--n-valid-unseen", "1", "--receptacles", "6", "--distractors", "2",
         "--workers", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "train: 6 games" in result.stdout and "valid_unseen: 1 games" in result.stdout
    assert "time:" in result.stdout
    assert len(games(out, "train")) == 6 and len(games(out, "valid_unseen")) == 1
    for game in games(out, "train"):
        problem = (game / "initial_state.pddl").read_text()
        assert len(re.findall(r"^\S+_bar_\S+ - receptacle$", problem, re.MULTILINE)) <= 6


def test_bad_inputs_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="receptacles_per_room must be >= 3"):
        SuiteSpec(receptacles_per_room=2)
    with pytest.raises(ValueError, match="n_train must be >= 6"):
        SuiteSpec(n_train=2, n_valid_seen=3)
    (tmp_path / "json_2.1.1").mkdir()
    with pytest.raises(FileExistsError, match="remove it or choose another"):
        generate_suite(SMALL, tmp_path)
