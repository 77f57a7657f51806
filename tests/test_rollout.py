"""Batched rollouts in the real engine with a real (tiny) transformers model.

A tiny Llama is fitted for a few seconds to the walkthroughs of two generated games, so it
wins those two and wanders (invalid and repeated actions) in the others: the batch then holds
episodes of different lengths, and finished envs must leave it without changing the others.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace

import pytest
import torch

from harness.agent.prompt import PromptSettings, render_window_messages
from harness.agent.rollout import RolloutSettings, chat_tokens, episode_data, rollout
from harness.agent.trajectory import collate
from harness.default.tiny import TinyModelSpec, build_tiny_model, build_tokenizer
from harness.envs import EnvPool, discover_games
from harness.loop.scoring import sequence_logprobs

MAX_STEPS = 8
SPEC = TinyModelSpec(layers=2, hidden=64, heads=2, kv_heads=2, intermediate=128, tie_embeddings=False)
PROMPT = PromptSettings(history=2)


def _walkthrough(game) -> list[str]:
    return json.loads(open(game.gamefile).read())["walkthrough"]


def _play_walkthroughs(pool: EnvPool, games) -> tuple[list[str], list[list[tuple[str, list[str], str]]]]:
    """(task, [(observation, admissible, action)]) of each game, from the engine itself."""
    states = pool.reset([g.gamefile for g in games])
    tasks = [s.task for s in states]
    plans = [_walkthrough(g) for g in games]
    steps: list[list] = [[] for _ in games]
    for t in range(max(map(len, plans))):
        actions = [plan[t] if t < len(plan) else None for plan in plans]
        before = [(s.text, list(s.admissible)) for s in states]
        states = pool.step(actions)
        for i, action in enumerate(actions):
            if action is not None:
                steps[i].append((*before[i], action))
    assert all(s.won for s in states), "the generated games' walkthroughs must win"
    return tasks, steps


@pytest.fixture(scope="module")
def world(small_suite):
    """Pool, games, a tokenizer and a tiny model fitted to two walkthroughs (both layouts)."""
    torch.set_num_threads(1)
    games = discover_games(small_suite, "train").games
    pick = [g for g in games if g.task_type == "pick_and_place_simple"]
    others = [g for g in games if g.task_type in ("look_at_obj_in_light", "pick_heat_then_place_in_recep")]
    with EnvPool(num_workers=2, max_steps=MAX_STEPS) as pool:
        tasks, steps = _play_walkthroughs(pool, pick)
        corpus = [m["content"] for task, episode in zip(tasks, steps, strict=True) for obs, adm, act in episode
                  for m in render_window_messages(task, [(obs, act)], obs, adm, PROMPT)]
        tokenizer = build_tokenizer(corpus)
        model = build_tiny_model(SPEC, tokenizer, seed=0)
        data = [d for i, (task, episode) in enumerate(zip(tasks, steps, strict=True)) for layout in ("full", "window")
                for d in episode_data(tokenizer, task, episode, layout, PROMPT, trajectory_index=i)]
        batch = collate(data, tokenizer.pad_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
            for _ in range(300):
                logp_B_T = sequence_logprobs(model, batch)
                loss = -(logp_B_T.sum() / batch["response_mask_B_T"].sum())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if loss.item() < 0.01:
                    break
        assert loss.item() < 0.01, f"could not fit the walkthroughs (loss {loss.item():.3f})"
        yield {"pool": pool, "pick": pick, "others": others, "tasks": tasks, "steps": steps,
               "tokenizer": tokenizer, "model": model.eval()}


def _summary(trajectory):
    return (trajectory.won, trajectory.num_turns, trajectory.invalid_actions, trajectory.repeated_actions,
            [t.response_ids for t in trajectory.turns], [t.action for t in trajectory.turns],
            [t.feedback for t in trajectory.turns], [d.token_ids for d in trajectory.data])


def _rescored(model, trajectory, pad_id) -> tuple[torch.Tensor, torch.Tensor]:
    """(scoring's one-pass log-probs, the log-probs logged at sampling time) at response tokens."""
    batch = collate(trajectory.data, pad_id)
    with torch.no_grad():
        logp_B_T = sequence_logprobs(model, batch)
    mask = batch["response_mask_B_T"].bool()
    return logp_B_T[mask], batch["old_logp_B_T"][mask]


def test_fitted_policy_wins_and_its_full_datum_is_the_expert_token_layout(world):
    tokenizer, model = world["tokenizer"], world["model"]
    trajectories = rollout(model, tokenizer, world["pool"], world["pick"], RolloutSettings(layout="full", greedy=True, max_new_tokens=32), PROMPT)
    chat = chat_tokens(tokenizer)
    for trajectory, task, steps in zip(trajectories, world["tasks"], world["steps"], strict=True):
        assert trajectory.task == task and trajectory.won and trajectory.failed is None
        assert [t.action for t in trajectory.turns] == [action for _, _, action in steps]
        assert (trajectory.num_turns, trajectory.invalid_actions, trajectory.repeated_actions) == (len(steps), 0, 0)
        assert [t.won_after for t in trajectory.turns] == [False] * (len(steps) - 1) + [True]
        (datum,) = trajectory.data
        # rollout's token layout == the teacher-forced expert layout == the chat template's rendering
        assert datum.token_ids == episode_data(tokenizer, task, steps, "full", PROMPT)[0].token_ids
        conversation = []
        for turn, (observation, _, action) in zip(trajectory.turns, steps, strict=True):
            assert f"Observation: {observation}\n" in turn.prompt_text  # full: the new user message
            conversation += [{"role": "user", "content": turn.prompt_text},
                             {"role": "assistant", "content": action}]
        text = tokenizer.apply_chat_template(conversation, tokenize=False).rstrip("\n")
        assert datum.token_ids == chat.encode(text)


@pytest.mark.parametrize("layout", ["full", "window"])
def test_greedy_batched_rollout_equals_each_env_alone(world, layout):
    tokenizer, model, pool = world["tokenizer"], world["model"], world["pool"]
    games = world["pick"] + world["others"][:3]
    settings = RolloutSettings(layout=layout, greedy=True, max_new_tokens=12)
    alone = [rollout(model, tokenizer, pool, [g], settings, PROMPT)[0] for g in games]
    variants = {"one batch": settings, "groups of 2": replace(settings, max_batch_envs=2)}
    if layout == "full":  # the key/value cache carried across turns must change nothing
        variants["no cache reuse"] = replace(settings, reuse_cache=False)
    for name, variant in variants.items():
        batched = rollout(model, tokenizer, pool, games, variant, PROMPT)
        # the batch mixes 4- and 5-turn wins with 8-turn failures, so finished envs left it
        turns = sorted(t.num_turns for t in batched)
        assert turns == sorted([len(s) for s in world["steps"]] + [MAX_STEPS] * 3), name
        assert sum(t.invalid_actions for t in batched) > 0
        for b, a in zip(batched, alone, strict=True):
            assert _summary(b) == _summary(a), name
            for db, da in zip(b.data, a.data, strict=True):
                torch.testing.assert_close(torch.tensor(db.sample_logprobs), torch.tensor(da.sample_logprobs),
                                           rtol=0, atol=1e-5, msg=name)


def test_full_datum_masks_and_one_pass_scoring_match_sampling(world):
    tokenizer, model = world["tokenizer"], world["model"]
    games = world["pick"][:1] + world["others"][:2]
    # temperature and top-p change what is sampled, never the logged distribution (raw, T=1)
    settings = RolloutSettings(layout="full", temperature=1.5, top_p=0.95, max_new_tokens=6)
    trajectories = rollout(model, tokenizer, world["pool"], games, settings, PROMPT, seed=1)
    end_of_turn = chat_tokens(tokenizer).end_of_turn_id
    for index, trajectory in enumerate(trajectories):
        (datum,) = trajectory.data
        assert datum.trajectory_index == index
        sampled = [i for i, m in zip(datum.token_ids, datum.response_mask, strict=True) if m]
        assert sampled == [i for turn in trajectory.turns for i in turn.response_ids]
        turns = [t for t, m in zip(datum.turn_index, datum.response_mask, strict=True) if m]
        assert turns == [k for k, turn in enumerate(trajectory.turns) for _ in turn.response_ids]
        assert all(t == -1 for t, m in zip(datum.turn_index, datum.response_mask, strict=True) if not m)
        # a reply cut by max_new_tokens gets its end-of-turn token as context (mask 0)
        cut = [k for k, turn in enumerate(trajectory.turns[:-1]) if turn.response_ids[-1] != end_of_turn]
        for k in cut:
            last = max(j for j, t in enumerate(datum.turn_index) if t == k)
            assert datum.token_ids[last + 1] == end_of_turn and datum.response_mask[last + 1] == 0
        rescored, logged = _rescored(model, trajectory, tokenizer.pad_token_id)
        assert len(logged) == len(sampled)
        torch.testing.assert_close(rescored, logged, rtol=0, atol=1e-4)
    assert any(t.turns[k].response_ids[-1] != end_of_turn for t in trajectories for k in range(t.num_turns))


def test_window_layout_gives_one_datum_per_turn_with_task_and_history(world):
    tokenizer, model = world["tokenizer"], world["model"]
    games = world["pick"][:1] + world["others"][:1]
    trajectories = rollout(model, tokenizer, world["pool"], games, RolloutSettings(layout="window", greedy=True, max_new_tokens=32),
                           PromptSettings(history=1))
    for index, trajectory in enumerate(trajectories):
        assert len(trajectory.data) == trajectory.num_turns
        for k, (turn, datum) in enumerate(zip(trajectory.turns, trajectory.data, strict=True)):
            assert datum.trajectory_index == index
            assert {t for t in datum.turn_index if t >= 0} == {k}
            n = len(turn.response_ids)
            assert datum.response_mask == [0] * (len(datum.token_ids) - n) + [1] * n
            assert datum.token_ids[-n:] == turn.response_ids
            assert f"Your task is to: {trajectory.task}" in turn.prompt_text
            if k:  # history 1: the previous action, and nothing older
                assert f"Action: {trajectory.turns[k - 1].action}\n" in turn.prompt_text
                assert turn.prompt_text.count("Action:") == 1
        rescored, logged = _rescored(model, trajectory, tokenizer.pad_token_id)
        torch.testing.assert_close(rescored, logged, rtol=0, atol=1e-4)


def test_task_sentence_in_every_turn_of_both_layouts(world):
    for layout in ("full", "window"):
        trajectories = rollout(world["model"], world["tokenizer"], world["pool"], world["others"][:2],
                               RolloutSettings(layout=layout, greedy=True, max_new_tokens=32, max_turns=5), PROMPT)
        assert [t.num_turns for t in trajectories] == [5, 5]
        for trajectory in trajectories:
            assert all(f"Your task is to: {trajectory.task}" in t.prompt_text for t in trajectory.turns)
            if layout == "full":  # and in the token ids the model actually saw, once per turn
                task_ids = chat_tokens(world["tokenizer"]).encode(f"Your task is to: {trajectory.task}")
                ids = trajectory.data[0].token_ids
                hits = [j for j in range(len(ids)) if ids[j:j + len(task_ids)] == task_ids]
                assert len(hits) == 5


def test_invalid_and_repeated_actions_are_counted_and_sent_as_written(world):
    tokenizer, model = world["tokenizer"], world["model"]
    game = world["pick"][:1]
    first_word = world["steps"][0][0][2].split()[0]  # 'go'
    # one token per reply: a bare word, well-formed but never admissible
    (bare,) = rollout(model, tokenizer, world["pool"], game, RolloutSettings(layout="full", greedy=True, max_new_tokens=1), PROMPT)
    assert bare.turns[0].action == first_word and bare.turns[0].parseable
    assert (bare.num_turns, bare.invalid_actions, bare.won) == (MAX_STEPS, MAX_STEPS, False)
    assert all(t.feedback == "Nothing happens." and not t.admissible_action for t in bare.turns)
    assert bare.repeated_actions == sum(1 for a, b in zip(bare.turns, bare.turns[1:], strict=False) if a.action == b.action)
    # think_action format with a model that answers bare actions: no <action> tag, unparseable;
    # the raw reply still goes to the engine and counts as invalid
    think = PromptSettings(history=2, answer_format="think_action")
    (tagless,) = rollout(model, tokenizer, world["pool"], game, RolloutSettings(layout="full", greedy=True, max_new_tokens=3), think)
    assert tagless.invalid_actions == MAX_STEPS == tagless.num_turns
    for turn in tagless.turns:
        assert not turn.parseable and turn.action == turn.response_text and turn.feedback == "Nothing happens."
    assert tagless.repeated_actions == sum(1 for a, b in zip(tagless.turns, tagless.turns[1:], strict=False) if a.action == b.action)


def test_seed_repeats_sampling_and_leaves_the_global_rng_alone(world):
    games = world["others"][:2]
    settings = RolloutSettings(layout="full", temperature=1.0, max_new_tokens=6, max_turns=3)
    torch.manual_seed(123)
    first = rollout(world["model"], world["tokenizer"], world["pool"], games, settings, PROMPT, seed=7)
    after = torch.rand(3)
    second = rollout(world["model"], world["tokenizer"], world["pool"], games, settings, PROMPT, seed=7)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after)
    assert [_summary(t) for t in first] == [_summary(t) for t in second]
    other = rollout(world["model"], world["tokenizer"], world["pool"], games, settings, PROMPT, seed=8)
    assert [_summary(t) for t in first] != [_summary(t) for t in other]


def test_prompt_longer_than_the_model_context_is_a_clear_error(world):
    small = build_tiny_model(TinyModelSpec(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64,
                                           max_positions=64), world["tokenizer"])
    with pytest.raises(ValueError, match="exceeds the model's 64 positions.*layout=window"):
        rollout(small, world["tokenizer"], world["pool"], world["pick"][:1], RolloutSettings(layout="full", max_new_tokens=32), PROMPT)


def test_a_dead_worker_or_broken_game_fails_its_episodes_not_the_batch(world, tmp_path):
    tokenizer, model = world["tokenizer"], world["model"]
    broken = tmp_path / "game.tw-pddl"
    game = json.loads(open(world["pick"][0].gamefile).read())
    broken.write_text(json.dumps({**game, "pddl_problem": "(define (problem broken"}))
    games = [world["pick"][0], world["pick"][1], world["others"][0], world["others"][1]]
    games[2] = type(games[2])(str(broken), games[2].task_type, "train")
    with EnvPool(num_workers=2, max_steps=MAX_STEPS) as pool:
        prefills = []

        def kill_worker_at_third_turn(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None and ids.shape[1] > 1:  # a prefill: one per generate call
                prefills.append(ids.shape[0])
                if len(prefills) == 3:
                    os.kill(pool.worker_pids()[1], signal.SIGKILL)  # slots 1 and 3

        hook = model.register_forward_pre_hook(kill_worker_at_third_turn, with_kwargs=True)
        try:
            trajectories = rollout(model, tokenizer, pool, games, RolloutSettings(layout="full", greedy=True, max_new_tokens=32), PROMPT)
        finally:
            hook.remove()
    won, killed, unloadable, killed_too = trajectories
    assert won.won and won.failed is None and won.num_turns == len(world["steps"][0])
    assert "failed" in (unloadable.failed or "") and unloadable.turns == [] and unloadable.data == []
    for trajectory in (killed, killed_too):
        assert "died" in trajectory.failed and not trajectory.won
        assert trajectory.num_turns == 3 and trajectory.turns[-1].feedback == ""
    assert prefills[:3] == [3, 3, 3]  # the broken game never entered the batch


def test_planner_next_action_is_recorded_for_the_oracle_gate(world):
    from harness.loop.judge import oracle_labels

    tokenizer, model = world["tokenizer"], world["model"]
    with EnvPool(num_workers=1, max_steps=MAX_STEPS, with_plan=True) as pool:
        fitted = rollout(model, tokenizer, pool, world["pick"], RolloutSettings(layout="full", greedy=True, max_new_tokens=32), PROMPT)
        wandering = rollout(model, tokenizer, pool, world["others"][:1], RolloutSettings(layout="full", greedy=True, max_new_tokens=32), PROMPT)
    # the model plays the walkthrough, which is the planner's plan: every turn is the planner's move
    assert all(t.won for t in fitted)
    assert all(turn.expert_action == turn.action for t in fitted for turn in t.turns)
    assert set(oracle_labels(fitted).values()) == {0}
    # elsewhere the planner still names a command each turn, and rejected ones are Strong
    labels = oracle_labels(wandering)
    for (_, k), label in labels.items():
        turn = wandering[0].turns[k]
        assert turn.expert_action in turn.admissible
        assert label == (2 if (not turn.admissible_action or turn.repeated) else 0 if turn.action == turn.expert_action else 1)


def test_growing_cache_layer_equals_dynamic_layer_and_grows_by_doubling():
    """The rollout's key/value cache layer holds what transformers' DynamicLayer holds after any
    sequence of appends and batch selections, but appends in place: its buffer is reallocated
    only when full (capacity doubles), not on every decode step."""
    from transformers.cache_utils import DynamicLayer

    from harness.agent.rollout import GrowingLayer

    gen = torch.Generator().manual_seed(0)
    growing, dynamic = GrowingLayer(), DynamicLayer()
    capacities, pointers = [], []
    batch = 3
    for step, length in enumerate([40, 1, 1, 30, 1, 1, 1, 50, 1, 200, 1]):
        if step == 5:  # an env finished: rows 0 and 2 stay
            keep = torch.tensor([0, 2])
            growing.batch_select_indices(keep)
            dynamic.batch_select_indices(keep)
            batch = 2
        k, v = torch.randn(batch, 2, length, 4, generator=gen), torch.randn(batch, 2, length, 4, generator=gen)
        got, want = growing.update(k, v), dynamic.update(k, v)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
        assert growing.get_seq_length() == dynamic.get_seq_length()
        capacities.append(growing._buffer[0].shape[-2])
        pointers.append(growing._buffer[0].data_ptr())
    # 40 -> a buffer of 2 x 40 = 80; 41, 42, 72, 73 fit. The selection copies 73 positions out,
    # +1 = 74 -> 148; 75, 125, 126 fit; 326 -> 652; 327 fits.
    assert capacities == [80] * 5 + [148] * 4 + [652] * 2
    assert growing.get_seq_length() == 327
    for k in range(1, len(pointers)):  # the same capacity is the same buffer, written in place
        if capacities[k] == capacities[k - 1] and k != 5:  # (step 5 selected rows: a new buffer)
            assert pointers[k] == pointers[k - 1], k


def test_rollout_uses_the_growing_cache_only_for_full_attention_models(world):
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.agent.rollout import GrowingLayer, growing_cache

    cache = growing_cache(world["model"])
    assert cache is not None and cache.layer_class_to_replicate is GrowingLayer
    sliding = AutoConfig.for_model("mistral", vocab_size=32, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   sliding_window=8)
    assert growing_cache(AutoModelForCausalLM.from_config(sliding)) is None
