"""DAgger's labeller: the exploring expert follows any policy's commands and names its own next
command in every visited state; the corrections become SFT data in the rollout's token layout."""

from __future__ import annotations

import pytest

from harness.agent.prompt import PromptSettings
from harness.default.dagger import (
    DaggerSettings,
    LabelledEpisode,
    dagger_data,
    episode_record,
    expert_labels,
    load_episode_records,
    mixed_data,
    round_data,
    state_sample,
)
from harness.default.tiny import build_tokenizer
from harness.envs import EnvPool, GameInfo, discover_games
from harness.envs.demos import play_experts
from harness.envs.experts import ExploringExpert

ROOM = ("You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1, "
        "a sinkbasin 1, and a fridge 1.")


def test_expert_puts_down_an_object_the_task_does_not_need():
    expert = ExploringExpert("pick_and_place_simple", {"object_target": "Mug", "parent_target": "Fridge"})
    expert.observe(ROOM)
    expert.update("go to countertop 1")
    expert.update("take bread 1 from countertop 1")  # another policy's mistake
    assert expert.wrong == "bread 1"
    assert expert.choose(["move bread 1 to countertop 1", "go to fridge 1"]) == "move bread 1 to countertop 1"
    expert.update("move bread 1 to countertop 1")
    assert expert.wrong == "" and expert.phase == "find"
    assert expert.choose(["take mug 1 from countertop 1", "go to fridge 1"]) == "take mug 1 from countertop 1"


def test_expert_searches_again_after_the_object_was_put_in_the_wrong_place():
    expert = ExploringExpert("pick_clean_then_place_in_recep",
                             {"object_target": "Mug", "parent_target": "Fridge"})
    expert.observe(ROOM)
    expert.update("go to countertop 1")
    expert.update("take mug 1 from countertop 1")
    assert expert.phase == "tool"
    expert.update("go to fridge 1")
    expert.update("move mug 1 to fridge 1")  # not cleaned yet: the task is not done
    assert (expert.phase, expert.holding, expert.placed) == ("find", "", set())
    assert expert.choose(["take mug 1 from fridge 1", "go to cabinet 1"]) == "take mug 1 from fridge 1"


def test_labels_follow_the_commands_that_took_effect_only():
    game = GameInfo("g", "pick_and_place_simple", "train", (("object_target", "Mug"), ("parent_target", "Fridge")))
    go = ["go to cabinet 1", "go to countertop 1", "go to sinkbasin 1", "go to fridge 1"]
    turns = [
        (go, "go to sinkbasin 1", "On the sinkbasin 1, you see nothing."),  # off the expert's order
        (go, "take mug 1 from sinkbasin 1", "Nothing happens."),  # rejected: no effect
        (go + ["take mug 1 from countertop 1"], "go to cabinet 1", "The cabinet 1 is closed."),
    ]
    # 1: from the start the first listed place; 2: after sinkbasin 1 comes fridge 1 (the rejected
    # take changed nothing); 3: a mug is takeable here, so take it
    assert expert_labels(game, ROOM, turns) == ["go to cabinet 1", "go to fridge 1", "take mug 1 from countertop 1"]


def _episode(executed, labels):
    n = len(executed)
    return LabelledEpisode("put a mug in fridge.", "pick_and_place_simple", [ROOM] + ["ok."] * (n - 1),
                           [["look"]] * n, executed, labels, won=False)


def test_dagger_data_keeps_agreeing_turns_in_place_and_adds_one_datum_per_correction():
    tiny_tokenizer = build_tokenizer([ROOM, "put a mug in fridge. ok. go to look"])
    prompt = PromptSettings(show_admissible=False)
    episode = _episode(["go to cabinet 1", "go to fridge 1", "go to cabinet 1"],
                       ["go to cabinet 1", "go to sinkbasin 1", "go to countertop 1"])
    assert episode.agree == [True, False, False]
    data = dagger_data([episode], tiny_tokenizer, prompt, "full")
    assert len(data) == 3  # the episode (turn 0 trained) + one datum for each of turns 1 and 2
    whole, first_fix, second_fix = data
    assert sorted({t for t, m in zip(whole.turn_index, whole.response_mask, strict=True) if m}) == [0]

    def trained_text(datum):
        return tiny_tokenizer.decode([t for t, m in zip(datum.token_ids, datum.response_mask, strict=True) if m],
                                     skip_special_tokens=True)

    assert trained_text(first_fix) == "go to sinkbasin 1"
    assert trained_text(second_fix) == "go to countertop 1"
    # the correction of turn 2 sits after turns 0 and 1 as they were played
    assert len(second_fix.token_ids) > len(first_fix.token_ids)
    assert len(dagger_data([episode], tiny_tokenizer, prompt, "full", max_corrections=1)) == 2
    assert len(state_sample([episode], tiny_tokenizer, prompt, "full", per_episode=2)) == 2


def test_mixed_data_draws_the_share_from_the_corrections():
    base, extra = list(range(100)), [-1, -2]
    picked = mixed_data(base, extra, share=0.25, total=40, seed=0)
    assert len(picked) == 40 and sum(x < 0 for x in picked) == 10
    assert mixed_data(base, [], share=0.5, total=8, seed=0) == mixed_data(base, [], share=0.0, total=8, seed=0)


def test_expert_labels_its_own_episodes_with_its_own_commands(small_suite):
    # on the expert's own trajectory every label is the command it played (no off-policy drift)
    games = discover_games(small_suite, "valid_seen").games[:6]
    with EnvPool(num_workers=1, max_steps=30) as pool:
        episodes = play_experts(pool, games)
        first = [s.text for s in pool.reset([g.gamefile for g in games])]
    for game, observation, episode in zip(games, first, episodes, strict=True):
        turns = [(t["admissible"], t["action"], t["feedback"]) for t in episode["turns"]]
        assert expert_labels(game, observation, turns) == [t["action"] for t in episode["turns"]]


def _prepare(cache, *overrides, build=True):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "SAGE_OPD_CACHE": str(cache), "SAGE_OPD_SHIPPED": "0", "SAGE_OPD_BUILD": "1" if build else "0"}
    done = subprocess.run([sys.executable, "-m", "harness", "mode=prepare", "experiment=smoke",
                           f"hydra.run.dir={cache / 'run'}", *overrides], cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.slow
def test_dagger_is_a_cache_stage_after_the_base_teacher_and_keeps_the_student(tmp_path):
    import json
    import shutil

    import torch
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    plain = _prepare(cache)
    dagger = ["model.tiny.dagger_rounds=1", "model.tiny.dagger_games=3", "model.tiny.dagger_steps=2",
              "model.tiny.dagger_student_states=true"]
    out = _prepare(cache, *dagger)
    assert "dagger round 0" in out
    tiny = cache / "tiny"
    teachers = sorted(p for p in tiny.glob("teacher-*") if p.is_dir())
    students = [p for p in tiny.iterdir() if p.is_dir() and not p.name.startswith(("teacher-", "."))]
    assert len(teachers) == 2 and len(students) == 1  # one more teacher, the same warm-start student
    (staged,) = [t for t in teachers if "dagger" in json.loads((t / "report.json").read_text())]
    (base,) = [t for t in teachers if t != staged]
    report = json.loads((staged / "report.json").read_text())["dagger"]
    assert report["base_teacher"] == base.name and len(report["rounds"]) == 1
    # 3 games, greedy and at temperature 1, by the teacher and by the warm-start student
    assert report["rounds"][0]["episodes"] == 12
    assert {"won_t0.0", "student_won_t0.0", "student_won_t1.0"} <= set(report["rounds"][0])
    before, after = (load_file(str(t / "teacher" / "model.safetensors")) for t in (base, staged))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the rounds fine-tuned it
    # one stage per round: 2 rounds run round 1 only, on round 0's entry and saved episodes
    two = _prepare(cache, *dagger, "model.tiny.dagger_rounds=2")
    assert "dagger round 1:" in two and "dagger round 0:" not in two
    (second,) = [t for t in tiny.glob("teacher-*") if t.is_dir() and t not in teachers]
    rounds = json.loads((second / "report.json").read_text())["dagger"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[0] == report["rounds"][0]
    assert rounds[1]["dagger_data"] == rounds[0]["new_data"] + rounds[1]["new_data"]
    saved = [json.loads(line)["round"] for line in (second / "dagger_episodes.jsonl").read_text().splitlines()]
    assert saved == [0] * 12 + [1] * 12
    # judge turns: the same round-0 episodes (same teacher, same seeds), plus 4 judge examples
    # for each of the 12 episodes (every episode here has more than 4 turns in all)
    judged = _prepare(cache, *dagger, "model.tiny.dagger_judge_turns=true")
    (third,) = [t for t in tiny.glob("teacher-*") if t.is_dir() and t not in teachers + [second]]
    judged_round = json.loads((third / "report.json").read_text())["dagger"]["rounds"][0]
    assert "dagger round 0:" in judged
    assert judged_round["won"] == report["rounds"][0]["won"]
    assert judged_round["new_data"] == report["rounds"][0]["new_data"] + 4 * 12
    # with the staged teacher in the cache, the base teacher is not needed (nor built) again
    shutil.rmtree(base)
    again = _prepare(cache, *dagger, build=False)
    assert "dagger round" not in again and not base.exists()
    assert "prepared:" in plain and "prepared:" in again


def test_policy_judge_examples_label_a_policys_own_turns_against_the_expert():
    # turn 0 = the expert's command (Skip); 1 an off-plan valid command (Weak); 2 repeats turn 1
    # (Strong); 3 rejected by the engine (Strong); the last turn's prompt shows the turn's feedback
    from harness.default.judge_data import policy_judge_examples
    from harness.loop.judge import JudgeSettings

    episode = _episode(["go to cabinet 1", "go to sinkbasin 1", "go to sinkbasin 1", "take mug 9 from sinkbasin 1"],
                       ["go to cabinet 1", "go to countertop 1", "go to countertop 1", "go to countertop 1"])
    episode.feedbacks = ["You arrive at cabinet 1.", "You arrive at sinkbasin 1.", "You arrive at sinkbasin 1.",
                         "Nothing happens."]
    tokenizer = build_tokenizer([ROOM, "put a mug in fridge. ok. go to look nothing happens you arrive at"])
    messages, labels = policy_judge_examples([episode], tokenizer, JudgeSettings())
    assert labels == [0, 1, 2, 2]
    picked_messages, picked = policy_judge_examples([episode], tokenizer, JudgeSettings(), turns=[(0, 3), (0, 1)])
    assert picked == [2, 1] and picked_messages == [messages[3], messages[1]]  # those turns, in that order
    assert "take mug 9 from sinkbasin 1" in messages[3][-1]["content"]
    assert "Nothing happens." in messages[3][-1]["content"]
    episode.feedbacks = episode.feedbacks[:2]
    with pytest.raises(ValueError, match="feedback"):
        policy_judge_examples([episode], tokenizer, JudgeSettings())



def test_episode_records_round_trip_with_their_round(tmp_path):
    import json

    first = _episode(["go to cabinet 1", "look"], ["go to cabinet 1", "go to countertop 1"])
    second = _episode(["look"], ["look"])
    path = tmp_path / "episodes.jsonl"
    path.write_text("\n".join(json.dumps(episode_record(e, r)) for r, e in ((0, first), (1, second))) + "\n")
    assert load_episode_records(path) == [(0, first), (1, second)]


def test_round_data_adds_a_seeded_sample_of_judge_examples():
    tokenizer = build_tokenizer([ROOM, "put a mug in fridge. ok. go to look"])
    prompt = PromptSettings(show_admissible=False)
    episodes = [_episode(["look"] * 5, ["look"] * 5), _episode(["look"] * 3, ["look"] * 3)]  # 8 turns, all agree

    every_turn = [(i, t) for i, e in enumerate(episodes) for t in range(len(e.executed))]

    def judge(eps, turns=every_turn):  # one marker per (episode, turn) asked for
        return [("judge", i, t) for i, t in turns]

    def made(settings, round_index=0, judge_data=judge):
        return round_data(round_index, episodes, tokenizer, settings, prompt, "full", 0, judge_data)

    plain = made(DaggerSettings(rounds=1))
    assert len(plain) == 2  # each episode once, its agreeing turns trained in place; no correction
    three = DaggerSettings(rounds=1, judge_turns=True, judge_per_episode=3)  # budget 3 x 2 = 6 of the 8 turns
    picked = [d for d in made(three) if isinstance(d, tuple)]
    assert len(made(three)) == 2 + 6 and len(set(picked)) == 6 and set(picked) <= set(judge(episodes))
    assert picked == [d for d in made(three) if isinstance(d, tuple)]  # seeded
    assert picked != [d for d in made(three, round_index=1) if isinstance(d, tuple)]  # another seed per round
    every = DaggerSettings(rounds=1, judge_turns=True, judge_per_episode=10)  # budget 20 >= 8: all of them
    assert sorted(d for d in made(every) if isinstance(d, tuple)) == judge(episodes)
    with pytest.raises(ValueError, match="judge_examples"):
        made(three, judge_data=None)


def test_state_data_are_bucketed_by_the_turn_they_train():
    from harness.bench.agreement import trained_turn
    from harness.default.dagger import _state_datum

    tokenizer = build_tokenizer([ROOM, "put a mug in fridge. ok. go to look"])
    prompt = PromptSettings(show_admissible=False)
    episode = _episode(["go to cabinet 1", "look", "look", "look"], ["go to cabinet 1"] * 4)
    assert [trained_turn(_state_datum(episode, t, tokenizer, prompt, "full", 0)) for t in (0, 2, 3)] == [0, 2, 3]
    sampled = state_sample([episode], tokenizer, prompt, "full", per_episode=4)  # all 4 turns, in order
    assert [trained_turn(d) for d in sampled] == [0, 1, 2, 3]
