"""Batched multi-turn rollouts: every turn, one `generate` over all envs still running.

The output is one `Trajectory` per game with the EXACT sampled token ids (generated text is
never re-tokenized) and its training data:
- layout `full` (tinker-cookbook style): one `Datum` per trajectory. Its ids are the first
  prompt (chat template) + turn 0's sampled ids + the next user turn and assistant header +
  turn 1's sampled ids + ... The generation context of turn t is exactly the Datum prefix
  before turn t's response, so one forward pass over the Datum scores every turn as it was
  sampled.
- layout `window` (verl-agent style): one `Datum` per turn (that turn's prompt + its ids).

`sample_logprobs` holds log_softmax(raw logits)[sampled id]: the student's distribution at
temperature 1 with no top-p/top-k, computed from `output_logits` (logits before any logits
processor). That is exactly what scoring recomputes from a forward pass, whatever
temperature/top-p the tokens were sampled with.

Who acts is a `Sampler` (harness/agent/sampler.py): one model (`HFSampler`) or a rule mixing
student and teacher turns (`MixedSampler`). A turn whose actor is not trained (the teacher's
in a mixed rollout) is context: mask 0, turn index -1, sample_logprobs 0 in `full`; no Datum
in `window`. `Turn.actor` names who acted.

`Turn.prompt_text` is the chat text of the turn's prompt (`window`) or the turn's new user
message (`full`; the whole context is the Datum prefix). Evaluation uses the same `rollout`
with `RolloutSettings(greedy=True)` or an eval temperature.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from harness.agent.prompt import (
    ChatTokens,
    PromptSettings,
    chat_tokens,
    format_response,
    normalize_action,
    parse_action,
    render_first_user_message,
    render_next_user_message,
    render_window_messages,
    system_messages,
)
from harness.agent.sampler import (  # noqa: F401  (re-exported: their old home)
    LAYOUTS,
    EnvBatch,
    GrowingLayer,
    HFSampler,
    RolloutSettings,
    Sampler,
    generation_config,
    growing_cache,
    stop_token_ids,
)
from harness.agent.trajectory import Datum, Trajectory, Turn
from harness.envs.games import GameInfo
from harness.envs.pool import EnvPool


@dataclass
class _Episode:
    """The running state of one env's episode inside `rollout`."""

    trajectory: Trajectory
    observation: str
    admissible: list[str]
    history: list[tuple[str, str]]
    token_ids: list[int]  # layout full: the Datum so far (= the next generation context)
    response_mask: list[int]
    turn_index: list[int]
    sample_logprobs: list[float]
    plan: list[str] = field(default_factory=list)  # the planner's commands now (pool with_plan only)

    def extend(self, ids: list[int], logps: list[float] | None = None, turn: int = -1) -> None:
        self.token_ids += ids
        self.response_mask += [0 if logps is None else 1] * len(ids)
        self.turn_index += [-1 if logps is None else turn] * len(ids)
        self.sample_logprobs += [0.0] * len(ids) if logps is None else logps


def _window_datum(prompt_ids: list[int], ids: list[int], logps: list[float], turn: int, index: int) -> Datum:
    return Datum(prompt_ids + ids, [0] * len(prompt_ids) + [1] * len(ids),
                 [-1] * len(prompt_ids) + [turn] * len(ids), [0.0] * len(prompt_ids) + logps, index)


def _check_length(context: list[int], settings: RolloutSettings, limit: int | None, game: str) -> None:
    if limit is not None and len(context) + settings.max_new_tokens > limit:
        raise ValueError(
            f"prompt of {len(context)} tokens + max_new_tokens {settings.max_new_tokens} exceeds the model's "
            f"{limit} positions (game {game}); use layout=window, a shorter prompt history, fewer turns, "
            "or a model with a longer context."
        )


def rollout(policy, tokenizer, pool: EnvPool, games: list[GameInfo], settings: RolloutSettings,
            prompt_settings: PromptSettings, *, seed: int | None = None,
            timings: dict[str, float] | None = None) -> list[Trajectory]:
    """Play one episode per game, all envs in lock-step with one batched generate per turn.

    `policy` is a `Sampler` (made for this rollout: it holds the envs' caches) or a model
    (then an `HFSampler` of it). `seed` makes sampling repeatable (the global RNG is forked,
    not disturbed); `timings`, if given, accumulates seconds spent in "generate" (the
    sampler), "env" (pool reset and step) and "prompt".
    """
    chat = chat_tokens(tokenizer)
    sampler = policy if isinstance(policy, Sampler) else HFSampler(policy, tokenizer, settings)
    limit = sampler.max_positions
    clock = timings if timings is not None else {}
    for key in ("generate", "env", "prompt"):
        clock.setdefault(key, 0.0)

    started = time.perf_counter()
    states = pool.reset([g.gamefile for g in games])
    clock["env"] += time.perf_counter() - started
    episodes = [
        _Episode(Trajectory(g.gamefile, s.task, g.task_type, failed=s.failed), s.text, list(s.admissible),
                 [], [], [], [], [], plan=list(s.plan))
        for g, s in zip(games, states, strict=True)
    ]
    was_training = [model.training for model in sampler.models]
    for model in sampler.models:
        model.eval()  # no dropout (LoRA dropout included) while sampling
    device = sampler.device
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [],
                                   enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            turn = 0
            while settings.max_turns is None or turn < settings.max_turns:
                running = [i for i, s in enumerate(states) if not (s.done or s.failed)]
                if not running:
                    break
                started = time.perf_counter()
                contexts, prompt_texts = {}, {}
                for i in running:
                    contexts[i], prompt_texts[i] = _next_context(episodes[i], chat, prompt_settings, settings.layout, turn)
                    _check_length(contexts[i], settings, limit, games[i].gamefile)
                clock["prompt"] += time.perf_counter() - started

                started = time.perf_counter()
                sampled = sampler.generate(contexts)
                clock["generate"] += time.perf_counter() - started

                actions: list[str | None] = [None] * len(states)
                parsed = {}
                for i in running:
                    text = tokenizer.decode(sampled[i][0], skip_special_tokens=True)
                    parsed[i] = (text, parse_action(text, episodes[i].admissible, prompt_settings))
                    actions[i] = parsed[i][1].action
                started = time.perf_counter()
                states = pool.step(actions)
                clock["env"] += time.perf_counter() - started

                for i in running:
                    ids, logps = sampled[i]
                    actor = sampler.actors.get(i, "student")
                    _record_turn(episodes[i], states[i], ids, logps, *parsed[i], prompt_texts[i], turn,
                                 settings.layout, contexts[i], i, actor, actor in sampler.trained_actors)
                turn += 1
    finally:
        for model, training in zip(sampler.models, was_training, strict=True):
            model.train(training)

    trajectories = []
    for i, episode in enumerate(episodes):
        if settings.layout == "full" and any(episode.response_mask):  # (no trained turn: no Datum)
            episode.trajectory.data = [Datum(episode.token_ids, episode.response_mask, episode.turn_index,
                                             episode.sample_logprobs, trajectory_index=i)]
        trajectories.append(episode.trajectory)
    return trajectories


def _next_context(episode: _Episode, chat: ChatTokens, prompt_settings: PromptSettings, layout: str,
                  turn: int) -> tuple[list[int], str]:
    """The generation context of this turn and the prompt text shown (the new user text for `full`)."""
    task = episode.trajectory.task
    if layout == "window":
        messages = render_window_messages(task, episode.history, episode.observation, episode.admissible,
                                          prompt_settings)
        return chat.prompt_ids(messages)
    if turn == 0:
        messages = system_messages(prompt_settings) + [
            render_first_user_message(task, episode.observation, episode.admissible, prompt_settings)]
        ids, _ = chat.prompt_ids(messages)
        episode.extend(ids)
        return list(episode.token_ids), messages[-1]["content"]
    if episode.token_ids[-1] != chat.end_of_turn_id:
        episode.extend([chat.end_of_turn_id])  # the reply was cut by max_new_tokens: close the turn
    message = render_next_user_message(task, episode.observation, episode.admissible, prompt_settings)
    episode.extend(chat.between_turns(message))
    return list(episode.token_ids), message["content"]


def _record_turn(episode: _Episode, state, ids: list[int], logps: list[float], text: str, parsed,
                 prompt_text: str, turn: int, layout: str, context: list[int], index: int,
                 actor: str = "student", trained: bool = True) -> None:
    """Append the turn, its data and the engine's answer to the episode. An untrained turn
    (another model's) stays in the `full` Datum as context (mask 0) and gives no `window` Datum."""
    trajectory = episode.trajectory
    previous = trajectory.turns[-1].action if trajectory.turns else None
    trajectory.turns.append(Turn(
        prompt_text=prompt_text, response_ids=ids, response_text=text, action=parsed.action,
        feedback=state.text if not state.failed else "", admissible=list(episode.admissible),
        parseable=parsed.parseable, admissible_action=parsed.admissible,
        repeated=previous is not None and normalize_action(previous) == normalize_action(parsed.action),
        won_after=state.won, expert_action=episode.plan[0] if episode.plan else None, actor=actor,
    ))
    trajectory.won = bool(state.won) and not state.failed
    trajectory.failed = state.failed
    if layout == "full":
        episode.extend(ids, logps if trained else None, turn)
    elif trained:
        trajectory.data.append(_window_datum(context, ids, logps, turn, index))
    episode.history.append((episode.observation, parsed.action))
    episode.observation, episode.admissible, episode.plan = state.text, list(state.admissible), list(state.plan)


def episode_data(tokenizer, task: str, steps: list[tuple[str, list[str], str]], layout: str,
                 prompt_settings: PromptSettings, *, trajectory_index: int = 0,
                 train_turns: list[bool] | None = None) -> list[Datum]:
    """Training data for a given episode (an expert's) in exactly the token layout of `rollout`.

    `steps` holds (observation shown, admissible actions, action) per turn. Each response is
    `format_response(action)` + the end-of-turn token (mask 1, sample_logprobs 0: not sampled).
    `train_turns` (one flag per turn) leaves some turns out of the loss: in `full` they stay in
    the sequence as context (mask 0), in `window` they give no datum.
    """
    if train_turns is not None and len(train_turns) != len(steps):
        raise ValueError(f"train_turns has {len(train_turns)} flags for {len(steps)} steps")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    chat = chat_tokens(tokenizer)
    episode = _Episode(Trajectory("", task, ""), "", [], [], [], [], [], [])
    data = []
    for turn, (observation, admissible, action) in enumerate(steps):
        episode.observation, episode.admissible = observation, list(admissible)
        context, _ = _next_context(episode, chat, prompt_settings, layout, turn)
        ids = chat.encode(format_response(action, prompt_settings)) + [chat.end_of_turn_id]
        trained = train_turns is None or train_turns[turn]
        if layout == "full":
            episode.extend(ids, [0.0] * len(ids) if trained else None, turn)
        elif trained:
            data.append(_window_datum(context, ids, [0.0] * len(ids), turn, trajectory_index))
        episode.history.append((observation, action))
    if layout == "full" and steps:
        data = [Datum(episode.token_ids, episode.response_mask, episode.turn_index, episode.sample_logprobs,
                      trajectory_index=trajectory_index)]
    return data
