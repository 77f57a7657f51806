"""Who acts in a rollout: a `Sampler` turns each env's generation context into its next reply.

`HFSampler` runs one transformers model over fixed groups of envs (one `generate` per group
and turn) and keeps each group's key/value cache between turns (layout `full`), feeding only
the tokens its cache lacks. `MixedSampler` holds one HFSampler per model (student, teacher);
a rule picks per env and turn who acts, and both caches see every token of the context, so
either model can act next turn on exactly the context the Datum holds. `RolloutSettings` (how
replies are sampled) lives here too; rollout.py re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig
from transformers.cache_utils import DynamicLayer
from transformers.generation.utils import GenerateDecoderOnlyOutput

from harness.agent.prompt import ChatTokens, chat_tokens

Replies = dict[int, tuple[list[int], list[float]]]
"""env -> (sampled ids up to and including the first stop token, their log-probs)."""


LAYOUTS = ("full", "window")


@dataclass(frozen=True)
class RolloutSettings:
    """How trajectories are sampled (every field is a knob)."""

    layout: str = "window"
    """'window': one Datum per turn; 'full': one growing chat, one Datum per trajectory."""
    temperature: float = 1.0
    """Sampling temperature (train default 1.0; evaluation often 0.4)."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 = off."""
    greedy: bool = False
    """Argmax decoding (temperature and top_p are then unused)."""
    max_new_tokens: int = 24
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
    def generate(self, feeds: dict[int, list[int]],
                 act: set[int] | None = None) -> dict[int, tuple[list[int], list[float]]]:
        """feeds[env] = its tokens not fed yet (its whole context without a cache) ->
        (sampled ids up to and including the first stop token, their log-probs). Envs not in
        `act` (default: all act) are only fed: their reply is dropped and masked out of the cache."""
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
            if act is not None and row not in act:
                lengths.append(0)  # fed only: its reply is another model's
                continue
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


class Sampler:
    """The seam for who acts: `generate(contexts) -> {env: (ids, logps)}`, one call per turn.

    `contexts[env]` is the env's whole generation context (the Datum prefix in layout `full`);
    a sampler keeps its own fed position and cache per env and feeds only what it lacks.
    After a call, `actors[env]` names who produced the reply ("student" or "teacher"); the
    turns of an actor outside `trained_actors` are context (mask 0), never trained."""

    models: tuple[torch.nn.Module, ...] = ()
    trained_actors: frozenset[str] = frozenset({"student"})
    actors: dict[int, str]

    def generate(self, contexts: dict[int, list[int]]) -> Replies:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    @property
    def max_positions(self) -> int | None:
        """The shortest context among the models (None: unknown)."""
        limits = [getattr(m.config, "max_position_embeddings", None) for m in self.models]
        return min((x for x in limits if x is not None), default=None)


class HFSampler(Sampler):
    """One transformers model acting on every turn (`actor` names it in the Turns)."""

    def __init__(self, model, tokenizer, settings: RolloutSettings, actor: str = "student") -> None:
        chat = chat_tokens(tokenizer)
        self.models, self.actor, self.trained_actors = (model,), actor, frozenset({actor})
        self.stop_ids = stop_token_ids(model, chat)
        self.config = generation_config(settings, self.stop_ids, chat.pad_id, model)
        self.pad_id, self.group_size = chat.pad_id, settings.max_batch_envs
        self.keep_cache = settings.layout == "full" and settings.reuse_cache
        self.growing = settings.growing_cache
        self.groups: dict[int, EnvBatch] = {}  # fixed groups of envs: env // max_batch_envs
        self.fed: dict[int, int] = {}  # tokens of each env already in its group's cache
        self.actors = {}

    def generate(self, contexts: dict[int, list[int]], act: set[int] | None = None) -> Replies:
        """Replies of the envs in `act` (default: all). With a kept cache the other envs of a
        group that acts are fed too (their reply is dropped), so the group's cache stays whole;
        a group with no env in `act` is not called and catches up at its next call."""
        act = set(contexts) if act is None else act
        members: dict[int, list[int]] = {}
        for env in sorted(contexts):
            if self.keep_cache or env in act:
                members.setdefault(env // self.group_size if self.group_size else 0, []).append(env)
        replies: Replies = {}
        for key, envs in members.items():
            if not act.intersection(envs):
                continue
            batch = self.groups.get(key)
            if batch is None:
                batch = self.groups[key] = EnvBatch(self.models[0], self.config, self.stop_ids, self.pad_id,
                                                    self.keep_cache, self.growing)
            feeds = {e: contexts[e][self.fed.get(e, 0) if self.keep_cache else 0:] for e in envs}
            out = batch.generate(feeds, act=None if act.issuperset(envs) else act.intersection(envs))
            for e in envs:
                self.fed[e] = len(contexts[e]) + (len(out[e][0]) if e in out else 0)
            replies.update(out)
        self.actors = {e: self.actor for e in replies}
        return replies


Rule = Callable[[int, int], str]
"""(env, turn) -> "student" or "teacher": who acts on that env's turn."""


class MixedSampler(Sampler):
    """Student and teacher in one episode: `rule(env, turn)` picks who acts on each turn.

    Each model keeps its own cache over the same envs and is fed every token of the context
    (its own replies, the other model's, the user turns), so the actor always sees the
    Datum's exact prefix. Only the student's turns are trained; the teacher's are context and
    their log-probs are the teacher's. Both models must share the tokenizer."""

    ACTORS = ("student", "teacher")

    def __init__(self, student, teacher, tokenizer, settings: RolloutSettings, rule: Rule) -> None:
        self.samplers = {"student": HFSampler(student, tokenizer, settings, "student"),
                         "teacher": HFSampler(teacher, tokenizer, settings, "teacher")}
        self.models, self.rule, self.turn = (student, teacher), rule, 0
        self.trained_actors, self.actors = frozenset({"student"}), {}

    def generate(self, contexts: dict[int, list[int]]) -> Replies:
        who = {env: self.rule(env, self.turn) for env in contexts}
        wrong = {w for w in who.values() if w not in self.ACTORS}
        if wrong:
            raise ValueError(f"the MixedSampler rule returned {sorted(wrong)}; it must return one of {self.ACTORS}")
        replies: Replies = {}
        for actor, sampler in self.samplers.items():
            act = {env for env, w in who.items() if w == actor}
            if act:
                replies.update(sampler.generate(contexts, act=act))
        self.actors, self.turn = who, self.turn + 1
        return replies
