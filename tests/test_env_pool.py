"""The env layer over the real ALFWorld engine: discovery errors, the pool, the explorer."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from harness.envs import EnvPool, GameDataError, discover_games, resolve_task_types
from harness.envs.demos import load_jsonl, play_experts, save_jsonl
from harness.envs.experts import ExploringExpert


@pytest.fixture(scope="module")
def seen_games(small_suite):
    return discover_games(small_suite, "valid_seen").games


def test_discovery_counts_and_task_types(small_suite):
    for split in ("train", "valid_seen", "valid_unseen"):
        found = discover_games(small_suite, split)
        assert len(found.games) == 12 and found.skipped == []
        assert {g.task_type for g in found.games} == set(resolve_task_types(None))
    picks = discover_games(small_suite, "valid_seen", task_types=["Pick2", 1])
    assert {g.task_type for g in picks.games} == {"pick_two_obj_and_place", "pick_and_place_simple"}


def test_explorer_wins_every_game_of_every_type(small_suite):
    games = discover_games(small_suite, "valid_unseen").games
    with EnvPool(num_workers=2, max_steps=30) as pool:
        episodes = play_experts(pool, games, expert="explorer")
    lost = [(e["task_type"], e["gamefile"], [t["action"] for t in e["turns"]]) for e in episodes if not e["won"]]
    assert not lost, lost
    for episode in episodes:
        assert episode["task"] and episode["turns"][-1]["won"]
        assert all(t["action"] in t["admissible"] for t in episode["turns"])


def test_planner_demos_roundtrip_jsonl(seen_games, tmp_path):
    with EnvPool(num_workers=1, max_steps=30, with_plan=True) as pool:
        episodes = play_experts(pool, seen_games[:3], expert="planner")
    assert all(e["won"] for e in episodes)
    path = save_jsonl(episodes, tmp_path / "demos.jsonl")
    back = load_jsonl(path)
    assert back == json.loads(json.dumps(episodes))
    assert set(back[0]["turns"][0]) == {"observation", "admissible", "action", "feedback", "won"}


def _play(pool, games, scripts):
    """Step games with fixed per-game action scripts; returns every state's (text, admissible, won, done)."""
    log = [[(s.text, s.task, tuple(s.admissible), s.won, s.done)] for s in pool.reset([g.gamefile for g in games])]
    return _continue(pool, log, scripts)


def _continue(pool, log, scripts):
    for t in range(max(len(s) for s in scripts)):
        actions = [s[t] if t < len(s) and not pool.states[i].done else None for i, s in enumerate(scripts)]
        states = pool.step(actions)
        for i, a in enumerate(actions):
            if a is not None:
                log[i].append((states[i].text, states[i].task, tuple(states[i].admissible), states[i].won, states[i].done))
    return log


def test_batched_equals_one_by_one(seen_games):
    games = seen_games[:6]
    # scripts: explorer actions recorded once, plus an invalid command in the middle
    with EnvPool(num_workers=2, max_steps=30) as pool:
        episodes = play_experts(pool, games)
    scripts = [[t["action"] for t in e["turns"]] for e in episodes]
    for s in scripts:
        s.insert(1, "dance with the fridge 1")
    with EnvPool(num_workers=2, max_steps=40) as pool:
        batched = _play(pool, games, scripts)
    with EnvPool(num_workers=1, max_steps=40) as pool:
        alone = [_play(pool, [g], [s])[0] for g, s in zip(games, scripts, strict=True)]
    assert batched == alone
    assert all(log[2][0] == "Nothing happens." for log in batched)  # the invalid command
    assert all(log[-1][3] for log in batched)  # still won after the detour


def test_step_cap_and_finished_envs_cost_nothing(seen_games):
    with EnvPool(num_workers=1, max_steps=3) as pool:
        states = pool.reset([g.gamefile for g in seen_games[:2]])
        for _ in range(3):
            states = pool.step(["look", "inventory"])
        assert all(s.done and not s.won and s.steps == 3 for s in states)
        # finished envs are not sent anything: the action is ignored, the step count stays
        states = pool.step([None, "this is ignored"])
        assert [s.steps for s in states] == [3, 3]


def test_worker_death_fails_its_episodes_only(seen_games):
    games = seen_games[:4]
    with EnvPool(num_workers=2, max_steps=30) as pool:
        pool.reset([g.gamefile for g in games])
        pool.step(["look"] * 4)
        dead_pid = pool.worker_pids()[0]
        os.kill(dead_pid, signal.SIGKILL)
        time.sleep(0.2)
        states = pool.step(["look"] * 4)
        # slots 0 and 2 lived in worker 0
        assert states[0].failed and "died" in states[0].failed and states[0].done
        assert states[2].failed and states[2].done
        assert states[1].failed is None and states[1].steps == 2 and not states[1].done
        assert pool.restarts == 1 and pool.worker_pids()[0] != dead_pid
        # the replacement worker serves the next batch
        fresh = pool.reset([g.gamefile for g in games])
        assert all(s.failed is None and s.admissible for s in fresh)


def test_missing_data_root_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(GameDataError, match="ALFWORLD_DATA.*harness.envs.generate"):
        discover_games(None, "valid_seen")
    with pytest.raises(GameDataError, match=f"{tmp_path}.*no json_2.1.1"):
        discover_games(tmp_path, "valid_seen")


def test_empty_split_and_unknown_task_type(tmp_path):
    (tmp_path / "json_2.1.1" / "valid_seen").mkdir(parents=True)
    with pytest.raises(GameDataError, match="No playable games.*valid_seen.*alfworld-download"):
        discover_games(tmp_path, "valid_seen")
    with pytest.raises(GameDataError, match="Unknown task type 'pick_banana'.*pick_and_place_simple"):
        discover_games(tmp_path, "valid_seen", task_types=["pick_banana"])
    with pytest.raises(GameDataError, match="Unknown split"):
        discover_games(tmp_path, "test")


def test_malformed_game_is_named_then_skipped_or_fatal(small_suite, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_suite / "json_2.1.1" / "valid_seen", root / "json_2.1.1" / "valid_seen")
    games = discover_games(root, "valid_seen").games
    broken = os.path.join(os.path.dirname(games[0].gamefile), "traj_data.json")
    with open(broken, "w") as f:
        f.write("{ not json")
    found = discover_games(root, "valid_seen", on_malformed="skip")
    assert len(found.games) == len(games) - 1
    assert len(found.skipped) == 1 and broken in found.skipped[0][1]
    with pytest.raises(GameDataError, match=f"{broken}: malformed traj_data.json"):
        discover_games(root, "valid_seen", on_malformed="error")


def test_explorer_follows_visible_order_without_hidden_knowledge():
    expert = ExploringExpert("pick_and_place_simple", {"object_target": "Mug", "parent_target": "Fridge"})
    start = ("You are in the middle of a room. Looking quickly around you, you see a toaster 1, a cabinet 2, "
             "a cabinet 1, a countertop 1, and a fridge 1.")
    places = ["toaster 1", "cabinet 2", "cabinet 1", "countertop 1", "fridge 1"]
    go = lambda *skip: [f"go to {p}" for p in places if p not in skip] + ["inventory", "look"]  # noqa: E731
    # the room's listing is the order, not the sorted admissible list
    assert expert.act(start, go()) == "go to toaster 1"
    # cabinet 2 and cabinet 1 share a spot: from cabinet 2, cabinet 1 cannot be gone to, only opened
    assert expert.act("On the toaster 1, you see nothing.", go("toaster 1")) == "go to cabinet 2"
    assert expert.act("The cabinet 2 is closed.", go("cabinet 2", "cabinet 1") + ["open cabinet 1", "open cabinet 2"]) \
        == "open cabinet 2"
    assert expert.act("In it, you see nothing.", go("cabinet 2", "cabinet 1") + ["open cabinet 1"]) == "open cabinet 1"
    assert expert.act("In it, you see a cup 1.", go("cabinet 2", "cabinet 1")) == "go to countertop 1"
    seen = ["take bread 1 from countertop 1", "take mug 2 from countertop 1"] + go("countertop 1")
    assert expert.act("On the countertop 1, you see a bread 1, and a mug 2.", seen) == "take mug 2 from countertop 1"
    # holding the mug: straight to the first fridge, open it, put the mug in
    assert expert.act("You pick up the mug 2.", go("countertop 1")) == "go to fridge 1"
    assert expert.act("The fridge 1 is closed.", ["open fridge 1"] + go("fridge 1")) == "open fridge 1"
    assert expert.act("", ["close fridge 1", "move mug 2 to fridge 1"]) == "move mug 2 to fridge 1"


def test_explorer_search_is_cyclic_from_where_it_stands():
    expert = ExploringExpert("look_at_obj_in_light", {"object_target": "Book", "toggle_target": "DeskLamp"})
    expert.observe("You are in the middle of a room. Looking quickly around you, you see a bed 1, a desk 1, "
                   "a shelf 1, and a drawer 1.")
    expert.update("go to shelf 1")
    expert.update("take book 1 from shelf 1")
    assert expert.phase == "lamp"
    # after shelf 1 comes drawer 1, then around to bed 1; the lamp search opens nothing
    reachable = ["go to bed 1", "go to desk 1", "go to drawer 1", "open drawer 1"]
    assert expert.choose(reachable) == "go to drawer 1"
    expert.update("go to drawer 1")
    assert expert.choose(["go to bed 1", "go to desk 1", "go to shelf 1", "open drawer 1"]) == "go to bed 1"
    assert expert.choose(["use desklamp 1", "go to bed 1"]) == "use desklamp 1"


def test_same_game_in_two_slots_of_one_worker_does_not_share_state(seen_games):
    game = seen_games[0]
    with EnvPool(num_workers=1, max_steps=30) as pool:
        episodes = play_experts(pool, [game])
        script = [t["action"] for t in episodes[0]["turns"]]
        idle = ["inventory"] + ["look"] * (len(script) - 1)
        twice = _play(pool, [game, game], [script, idle])
        alone = _play(pool, [game], [script])[0]
    assert twice[0] == alone and twice[0][-1][3]  # the expert still wins in slot 0
    assert len(twice[1]) == len(script) + 1 and not any(step[3] for step in twice[1])


def test_preloaded_games_play_exactly_like_fresh_ones_and_reset_at_once(seen_games):
    """`preload` loads and resets games in the workers while the caller does other work; the
    later reset answers from the stored first state. Same game twice (two copies), a game that is
    not preloaded, and a preloaded game left unused must change nothing."""
    games = seen_games[:4]
    with EnvPool(num_workers=2, max_steps=30) as pool:
        scripts = [[t["action"] for t in e["turns"]] for e in play_experts(pool, games)]
    order = [games[0], games[1], games[0], games[2]]
    longest = max(len(s) for s in scripts[:3])
    plans = [scripts[0], scripts[1], ["inventory"] + ["look"] * (longest - 1), scripts[2]]
    with EnvPool(num_workers=2, max_steps=30) as pool:
        reference = _play(pool, order, plans)
    with EnvPool(num_workers=2, max_steps=30) as pool:
        pool.preload([g.gamefile for g in order])
        states = pool.reset([g.gamefile for g in order])  # waits for the preload, then answers from it
        assert pool.preloaded_resets == 4
        preloaded = _continue(pool, [[(s.text, s.task, tuple(s.admissible), s.won, s.done)] for s in states], plans)
        pool.preload([games[3].gamefile, games[3].gamefile])  # never reset: answered at the next call
        again = _play(pool, order, plans)
        assert pool.preloaded_resets == 4  # the copies of games[3] wait unused (LRU evicts them in time)
        pool.preload([g.gamefile for g in order])
        third = _play(pool, order, plans)
        assert pool.preloaded_resets == 8
    assert preloaded == reference and again == reference and third == reference
    assert reference[0][-1][3] and not reference[2][-1][3]  # the expert wins; the idle copy does not


def test_worker_death_during_a_preload_fails_only_what_it_held(seen_games):
    with EnvPool(num_workers=2, max_steps=30) as pool:
        pool.preload([g.gamefile for g in seen_games[:4]])
        os.kill(pool.worker_pids()[1], signal.SIGKILL)
        states = pool.reset([g.gamefile for g in seen_games[:4]])
        assert pool.restarts == 1
        # the dead worker's preload answer was lost; its restart serves slots 1 and 3 anew
        assert all(s.failed is None and s.admissible for s in states), [s.failed for s in states]
