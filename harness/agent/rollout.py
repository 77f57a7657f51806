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

`Turn.prompt_text` is the chat text of the turn's prompt (`window`) or the turn's new user
message (`full`; the whole context is the Datum prefix). Evaluation uses the same `rollout`
with `RolloutSettings(greedy=True)` or an eval temperature.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer
from transformers.generation.utils import GenerateDecoderOnlyOutput

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
from harness.agent.trajectory import Datum, Trajectory, Turn
from harness.envs.games import GameInfo
from harness.envs.pool import EnvPool

LAYOUTS = ("full", "window")


@dataclass(frozen=True)
class RolloutSettings:
    """How trajectories are sampled (every field is a knob)."""

    layout: str = "full"
    """'full': one growing chat, one Datum per trajectory; 'window': one Datum per turn."""
    temperature: float = 1.0
    """Sampling temperature (train default 1.0; evaluation often 0.4)."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 = off."""
    greedy: bool = False
    """Argmax decoding (temperature and top_p are then unused)."""
    max_new_tokens: int = 32
    """Tokens per response; a response cut here still counts (its action is usually invalid)."""
    max_turns: int | None = None
    """Turns per episode; None = until the pool ends the episode (its step cap)."""
    max_batch_envs: int | None = None
    """Envs per generate call (fixed groups); None = all running envs in one call.
    `output_logits` keeps B x new tokens x vocab floats: large vocabularies may need smaller calls."""
    reuse_cache: bool = True
    """Layout `full`: keep each group's key/value cache across turns, so a turn prefills only
    its new tokens. Off: every turn prefills its whole context (slower, same tokens)."""
    growing_cache: bool = True
    """With `reuse_cache`: append to the cache in place (GrowingLayer) instead of transformers'
    DynamicCache, which copies the whole cache at every decode step (same tokens, slower)."""

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")
        if not self.greedy and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling (got {self.temperature}); use greedy=True for argmax")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens}")
        if self.max_turns is not None and self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1 or None, not {self.max_turns}")
        if self.max_batch_envs is not None and self.max_batch_envs < 1:
            raise ValueError(f"max_batch_envs must be >= 1 or None, not {self.max_batch_envs}")


def stop_token_ids(model, chat: ChatTokens) -> list[int]:
    """Ids that end a reply: the chat's end-of-turn token, the tokenizer's and model's eos."""
    ids = {chat.end_of_turn_id}
    for source in (chat.tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        ids.update(source if isinstance(source, list) else [source] if source is not None else [])
    return sorted(ids)


def generation_config(settings: RolloutSettings, stop_ids: list[int], pad_id: int, model=None) -> GenerationConfig:
    """A config that states every sampling knob, so a model's own defaults (Qwen's top_k=20,
    repetition_penalty=1.05, transformers' top_k=50) never change the sampling distribution."""
    config = GenerationConfig(
        do_sample=not settings.greedy, max_new_tokens=settings.max_new_tokens,
        eos_token_id=stop_ids, pad_token_id=pad_id, num_beams=1,
        output_logits=True, return_dict_in_generate=True,
        repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0,
    )
    if not settings.greedy:
        config.temperature, config.top_p, config.top_k = settings.temperature, settings.top_p, 0
        if model is not None and getattr(model.generation_config, "min_p", None) is not None:
            config.min_p = 0.0  # None would be filled from the model's default
    return config


# transformers renamed generate's `past_key_values` to `cache` during 5.x (output field too).
_CACHE_KEY = "cache" if "cache" in getattr(GenerateDecoderOnlyOutput, "__dataclass_fields__", {}) else "past_key_values"


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys/values live in a buffer with spare room (capacity doubles), so
    appending a decode step writes its new positions in place instead of copying the whole cache
    (`torch.cat`). With the cache kept across the 30 turns of a batch of episodes, that copy was
    60% of the time of a generate call on the tiny models (B x L x hidden floats, every token)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.get_seq_length()
        new = old + key_states.shape[-2]
        buffer = getattr(self, "_buffer", None)
        if buffer is None or buffer[0].shape[-2] < new or buffer[0].shape[0] != key_states.shape[0]:
            shape = (*key_states.shape[:-2], max(2 * new, 64), key_states.shape[-1])
            buffer = (key_states.new_empty(shape), value_states.new_empty(shape))
            if old:
                buffer[0][..., :old, :], buffer[1][..., :old, :] = self.keys, self.values
            self._buffer = buffer
        buffer[0][..., old:new, :], buffer[1][..., old:new, :] = key_states, value_states
        self.keys, self.values = buffer[0][..., :new, :], buffer[1][..., :new, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)  # a gathered copy; the next update makes a new buffer
        self._buffer = None

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._buffer = None

    def reset(self) -> None:
        super().reset()
        self._buffer = None


def growing_cache(model) -> DynamicCache | None:
    """A DynamicCache of GrowingLayers for a model whose layers all attend to the full context;
    None (generate's default cache) for sliding-window or hybrid models."""
    text = model.config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None) or ["full_attention"]
    sliding = bool(getattr(text, "sliding_window", None)) and getattr(text, "use_sliding_window", True)
    if set(types) != {"full_attention"} or sliding:
        return None
    cache = DynamicCache()  # layers are made on first use, from layer_class_to_replicate
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned ids and attention mask, (B, width)."""
    width = max(len(r) for r in rows)
    ids_B_T = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_B_T = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids_B_T[b, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_B_T[b, width - len(row):] = 1
    return ids_B_T, attention_B_T


class EnvBatch:
    """A fixed group of envs that generate together, one `generate` call per turn.

    With `keep_cache` (layout `full`) it keeps the key/value cache of the group's contexts
    between turns, so a turn feeds only the tokens added since the last one (the end of the
    last reply and the new user turn) instead of the whole history: the prefill cost stops
    growing with the turn number. Shorter feeds are left-padded and finished replies padded,
    so the cached sequence has masked holes; position ids come from the attention mask
    (cumsum), so every real token sits at its position in the Datum, as scoring sees it.
    """

    def __init__(self, model, config: GenerationConfig, stop_ids: list[int], pad_id: int, keep_cache: bool,
                 growing: bool = True) -> None:
        self.model, self.config, self.stop_ids, self.pad_id = model, config, set(stop_ids), pad_id
        self.keep_cache, self.growing = keep_cache, growing
        self.rows: list[int] = []  # env index of each cache row
        self.ids_B_L: torch.Tensor | None = None
        self.mask_B_L: torch.Tensor | None = None
        self.cache = None

    @torch.no_grad()
    def generate(self, feeds: dict[int, list[int]]) -> dict[int, tuple[list[int], list[float]]]:
        """feeds[env] = its tokens not fed yet (its whole context without a cache) ->
        (sampled ids up to and including the first stop token, their log-probs)."""
        rows = sorted(feeds)
        device = self.model.device
        new_ids_B_S, new_mask_B_S = (t.to(device) for t in _left_pad([feeds[r] for r in rows], self.pad_id))
        if self.keep_cache and self.cache is not None:
            if rows != self.rows:  # finished envs leave the batch
                keep = torch.tensor([self.rows.index(r) for r in rows], device=device)
                self.cache.batch_select_indices(keep)
                self.ids_B_L, self.mask_B_L = self.ids_B_L[keep], self.mask_B_L[keep]
            ids_B_T = torch.cat([self.ids_B_L, new_ids_B_S], dim=1)
            mask_B_T = torch.cat([self.mask_B_L, new_mask_B_S], dim=1)
            out = self.model.generate(input_ids=ids_B_T, attention_mask=mask_B_T, generation_config=self.config,
                                      **{_CACHE_KEY: self.cache})
        else:
            ids_B_T, mask_B_T = new_ids_B_S, new_mask_B_S
            cache = growing_cache(self.model) if self.keep_cache and self.growing else None
            out = self.model.generate(input_ids=ids_B_T, attention_mask=mask_B_T, generation_config=self.config,
                                      **({_CACHE_KEY: cache} if cache is not None else {}))
        width = ids_B_T.shape[1]
        new_B_N = out.sequences[:, width:]
        logp_B_N = torch.stack(
            [torch.log_softmax(logits_B_V.float(), dim=-1).gather(1, new_B_N[:, k:k + 1]).squeeze(1)
             for k, logits_B_V in enumerate(out.logits)], dim=1)
        results, lengths = {}, []
        for row, new_ids, logps in zip(rows, new_B_N.tolist(), logp_B_N.tolist(), strict=True):
            length = next((k + 1 for k, token in enumerate(new_ids) if token in self.stop_ids), len(new_ids))
            results[row] = (new_ids[:length], logps[:length])
            lengths.append(length)
        if self.keep_cache:
            # generate pads a finished reply and attends to the pads; later turns must not
            reply_mask_B_N = (torch.arange(new_B_N.shape[1], device=device)[None, :]
                              < torch.tensor(lengths, device=device)[:, None]).long()
            self.rows, self.ids_B_L = rows, out.sequences
            self.mask_B_L = torch.cat([mask_B_T, reply_mask_B_N], dim=1)
            self.cache = getattr(out, _CACHE_KEY)
        return results


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
    fed: int = 0  # tokens of this episode already in its batch's key/value cache
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


def rollout(model, tokenizer, pool: EnvPool, games: list[GameInfo], settings: RolloutSettings,
            prompt_settings: PromptSettings, *, seed: int | None = None,
            timings: dict[str, float] | None = None) -> list[Trajectory]:
    """Play one episode per game, all envs in lock-step with one batched generate per turn.

    `seed` makes sampling repeatable (the global RNG is forked, not disturbed); `timings`, if
    given, accumulates seconds spent in "generate", "env" and "prompt".
    """
    chat = chat_tokens(tokenizer)
    stop_ids = stop_token_ids(model, chat)
    config = generation_config(settings, stop_ids, chat.pad_id, model)
    limit = getattr(model.config, "max_position_embeddings", None)
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
    size = settings.max_batch_envs or max(1, len(games))
    keep_cache = settings.layout == "full" and settings.reuse_cache
    batches = [(range(k, min(k + size, len(games))),
                EnvBatch(model, config, stop_ids, chat.pad_id, keep_cache, settings.growing_cache))
               for k in range(0, len(games), size)]
    was_training = model.training
    model.eval()  # no dropout (LoRA dropout included) while sampling
    cuda = model.device.type == "cuda"
    try:
        with torch.random.fork_rng(devices=[model.device.index or 0] if cuda else [], enabled=seed is not None):
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
                sampled: dict[int, tuple[list[int], list[float]]] = {}
                for members, batch in batches:
                    feeds = {i: contexts[i][episodes[i].fed if keep_cache else 0:] for i in members if i in contexts}
                    if feeds:
                        sampled.update(batch.generate(feeds))
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
                    _record_turn(episodes[i], states[i], ids, logps, *parsed[i], prompt_texts[i], turn,
                                 settings.layout, contexts[i], i)
                    episodes[i].fed = len(contexts[i]) + len(ids)
                turn += 1
    finally:
        model.train(was_training)

    trajectories = []
    for i, episode in enumerate(episodes):
        if settings.layout == "full" and episode.trajectory.turns:
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
                 prompt_text: str, turn: int, layout: str, context: list[int], index: int) -> None:
    """Append the turn, its data and the engine's answer to the episode."""
    trajectory = episode.trajectory
    previous = trajectory.turns[-1].action if trajectory.turns else None
    trajectory.turns.append(Turn(
        prompt_text=prompt_text, response_ids=ids, response_text=text, action=parsed.action,
        feedback=state.text if not state.failed else "", admissible=list(episode.admissible),
        parseable=parsed.parseable, admissible_action=parsed.admissible,
        repeated=previous is not None and normalize_action(previous) == normalize_action(parsed.action),
        won_after=state.won, expert_action=episode.plan[0] if episode.plan else None,
    ))
    trajectory.won = bool(state.won) and not state.failed
    trajectory.failed = state.failed
    if layout == "full":
        episode.extend(ids, logps, turn)
    else:
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
