"""MixedSampler in the real engine: two tiny models share a tokenizer and take turns; each
turn's reply is exactly what its actor alone generates greedily from the same context ids."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from harness.agent.rollout import RolloutSettings, rollout
from harness.agent.sampler import HFSampler, MixedSampler
from harness.default.tiny import build_tiny_model
from tests.test_rollout import PROMPT, SPEC, world  # noqa: F401  (the fitted model and games)


def _alternate(env: int, turn: int) -> str:
    return "teacher" if turn % 2 else "student"


class RecordingSampler(MixedSampler):
    """A MixedSampler that keeps the contexts it was given, turn by turn."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.seen: list[dict[int, list[int]]] = []

    def generate(self, contexts):
        self.seen.append({env: list(ids) for env, ids in contexts.items()})
        return super().generate(contexts)


@pytest.fixture(scope="module")
def teacher(world):  # noqa: F811
    return build_tiny_model(replace(SPEC, hidden=48), world["tokenizer"], seed=3).eval()


def _summary(trajectory):
    return ([(t.actor, t.response_ids, t.action, t.feedback) for t in trajectory.turns],
            [(d.token_ids, d.response_mask, d.turn_index) for d in trajectory.data])


def test_mixed_rollout_turns_are_each_actors_own_greedy_reply(world, teacher):  # noqa: F811
    tokenizer, student, pool = world["tokenizer"], world["model"], world["pool"]
    games = world["pick"] + world["others"][:2]  # 4-5 turn wins (if unguided) and 8-turn failures
    settings = RolloutSettings(layout="full", greedy=True, max_new_tokens=6)
    sampler = RecordingSampler(student, teacher, tokenizer, settings, _alternate)
    trajectories = rollout(sampler, tokenizer, pool, games, settings, PROMPT)
    alone = {"student": student, "teacher": teacher}
    checked = {"student": 0, "teacher": 0}
    for env, trajectory in enumerate(trajectories):
        (datum,) = trajectory.data
        assert [t.actor for t in trajectory.turns] == [_alternate(env, k) for k in range(trajectory.num_turns)]
        for k, turn in enumerate(trajectory.turns):
            context = sampler.seen[k][env]
            n = len(turn.response_ids)
            # the context is the Datum's prefix and the reply follows it there
            assert datum.token_ids[:len(context) + n] == context + turn.response_ids
            # the actor alone, no cache, the same context ids: the same greedy reply
            ((ids, _),) = HFSampler(alone[turn.actor], tokenizer, replace(settings, reuse_cache=False)).generate(
                {0: context}).values()
            assert ids == turn.response_ids, (env, k, turn.actor)
            checked[turn.actor] += 1
            # only the student's reply is trained: mask 1 / its turn index; the teacher's is context
            trained = turn.actor == "student"
            span = slice(len(context), len(context) + n)
            assert datum.response_mask[span] == [int(trained)] * n
            assert datum.turn_index[span] == [k if trained else -1] * n
            if not trained:
                assert datum.sample_logprobs[span] == [0.0] * n  # the teacher's log-probs never land here
        assert sum(datum.response_mask) == sum(len(t.response_ids) for t in trajectory.turns if t.actor == "student")
    assert checked["student"] >= 4 and checked["teacher"] >= 4
    # the two models do differ: the teacher's replies are not the student's
    assert any(HFSampler(student, tokenizer, replace(settings, reuse_cache=False)).generate({0: sampler.seen[k][e]})[0][0]
               != t.response_ids for e, tr in enumerate(trajectories) for k, t in enumerate(tr.turns)
               if t.actor == "teacher")


def test_mixed_rollout_is_the_same_with_groups_without_cache_and_in_window(world, teacher):  # noqa: F811
    tokenizer, student, pool = world["tokenizer"], world["model"], world["pool"]
    games = world["pick"][:1] + world["others"][:2]
    # the teacher on envs 1 and 2 at turn 0, then every third turn: some groups of 2 have no
    # teacher turn (that model skips the call and catches up on the next)
    def rule(env: int, turn: int) -> str:
        return "teacher" if (turn == 0 and env > 0) or (turn % 3 == 2 and env != 1) else "student"

    settings = RolloutSettings(layout="full", greedy=True, max_new_tokens=6)
    base = rollout(MixedSampler(student, teacher, tokenizer, settings, rule), tokenizer, pool, games, settings, PROMPT)
    for name, variant in {"groups of 2": replace(settings, max_batch_envs=2),
                          "groups of 1": replace(settings, max_batch_envs=1),
                          "no cache reuse": replace(settings, reuse_cache=False)}.items():
        other = rollout(MixedSampler(student, teacher, tokenizer, variant, rule), tokenizer, pool, games, variant, PROMPT)
        assert [_summary(t) for t in other] == [_summary(t) for t in base], name
    window = replace(settings, layout="window")
    windowed = rollout(MixedSampler(student, teacher, tokenizer, window, rule), tokenizer, pool, games, window,
                       PROMPT)
    for env, trajectory in enumerate(windowed):
        student_turns = [k for k, t in enumerate(trajectory.turns) if t.actor == "student"]
        assert [t.actor for t in trajectory.turns] == [rule(env, k) for k in range(trajectory.num_turns)]
        # window: a teacher turn gives no datum; each student turn one, ending in its reply
        assert [{i for i in d.turn_index if i >= 0} for d in trajectory.data] == [{k} for k in student_turns]
        for k, datum in zip(student_turns, trajectory.data, strict=True):
            ids = trajectory.turns[k].response_ids
            assert datum.token_ids[-len(ids):] == ids and sum(datum.response_mask) == len(ids)


def test_rule_must_name_an_actor(world, teacher):  # noqa: F811
    settings = RolloutSettings(layout="full", greedy=True, max_new_tokens=2)
    sampler = MixedSampler(world["model"], teacher, world["tokenizer"], settings, lambda env, turn: "expert")
    with pytest.raises(ValueError, match=r"rule returned \['expert'\].*one of \('student', 'teacher'\)"):
        rollout(sampler, world["tokenizer"], world["pool"], world["pick"][:1], settings, PROMPT)


def test_models_are_back_in_their_training_mode_after_a_mixed_rollout(world, teacher):  # noqa: F811
    settings = RolloutSettings(layout="full", greedy=True, max_new_tokens=2, max_turns=1)
    world["model"].train()
    try:
        rollout(MixedSampler(world["model"], teacher, world["tokenizer"], settings, _alternate), world["tokenizer"],
                world["pool"], world["pick"][:1], settings, PROMPT)
        assert world["model"].training and not teacher.training
    finally:
        world["model"].eval()
    assert torch.is_grad_enabled()
