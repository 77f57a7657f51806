"""Judge examples for the tiny teacher's SFT: a noisy exploring expert played in the real engine.

At each turn the expert's own command is executed (label Skip) or, with some probability, a
valid but off-plan command (Weak) or an invalid command or a repeat of the last one (Strong)
instead. The label follows what really happened: a repeat of the previous command is Strong, an
answer of "Nothing happens." is Strong, the expert's command is Skip, any other command Weak.
The expert is told every command that took effect (`update`), so its plan stays consistent with
the game. The planner and the expert only MAKE the teacher; distillation stays verifier-free.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from harness.agent.prompt import normalize_action
from harness.agent.rollout import chat_tokens
from harness.agent.trajectory import Datum
from harness.default.sft import labelled_data
from harness.envs import EnvPool, discover_games, interleave_task_types
from harness.envs.experts import ExploringExpert, kind_of
from harness.loop.judge import (
    LABEL_NAMES,
    JudgeSettings,
    fitted_prompt,
    judge_prompt_text,
    label_probs,
    label_token_ids,
    load_template,
)

SKIP, WEAK, STRONG = 0, 1, 2
INVALID_FEEDBACK = "Nothing happens."
# Off-plan commands that never move the expert's plan on (no take/move/clean/heat/cool/use).
OFF_PLAN_VERBS = ("go to ", "examine ", "look", "inventory", "open ", "close ")


@dataclass(frozen=True)
class JudgeDataSettings:
    """How the noisy episodes are played (every field is a knob and part of the cache key)."""

    num_games: int = 80
    """Train games played for the teacher's SFT examples (after the held-out ones)."""
    heldout_games: int = 20
    """The first train games, kept out of the SFT examples, to measure the judge's accuracy."""
    weak_prob: float = 0.3
    """Chance per turn of a valid off-plan command instead of the expert's."""
    strong_prob: float = 0.3
    """Chance per turn of an invalid command or a repeat instead of the expert's."""
    repeat_share: float = 0.5
    """Share of the Strong turns that repeat the last command (the rest are invalid commands)."""
    max_steps: int = 30
    """Turns per episode."""
    max_examples: int | None = None
    """At most this many SFT examples (a seeded random subset); None = every turn played."""
    num_workers: int = 2
    """Env worker processes."""
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.weak_prob, self.strong_prob) < 0 or self.weak_prob + self.strong_prob > 1:
            raise ValueError(f"weak_prob and strong_prob must be >= 0 with a sum <= 1, got "
                             f"{self.weak_prob} and {self.strong_prob}")
        if not 0 <= self.repeat_share <= 1:
            raise ValueError(f"repeat_share must be in [0, 1], got {self.repeat_share}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples must be >= 1 or None, got {self.max_examples}")
        if self.num_games < 0 or self.heldout_games < 0:
            raise ValueError(f"num_games and heldout_games must be >= 0, got {self.num_games}, {self.heldout_games}")


@dataclass
class NoisyTurn:
    """One executed command, what the agent saw before it, the engine's answer and the label."""

    observation: str
    action: str
    feedback: str
    expert_action: str
    kind: str  # what was tried: expert / off_plan / invalid / repeat
    label: int  # 0 Skip, 1 Weak, 2 Strong (what really happened, see the module docstring)
    admissible: list[str] = field(default_factory=list)  # admissible commands when it was chosen


@dataclass
class NoisyEpisode:
    gamefile: str
    task: str
    task_type: str
    turns: list[NoisyTurn] = field(default_factory=list)
    won: bool = False
    failed: str | None = None  # why the env failed outside the game (its turns so far are kept)


def label_of(action: str, feedback: str, expert_action: str, previous: str | None) -> int:
    """Skip for the expert's command, Strong for a repeat or a rejected one, Weak otherwise."""
    if previous is not None and normalize_action(action) == normalize_action(previous):
        return STRONG
    if feedback.strip() == INVALID_FEEDBACK:
        return STRONG
    return SKIP if normalize_action(action) == normalize_action(expert_action) else WEAK


def _invalid_command(rng: random.Random, expert: ExploringExpert, admissible: list[str]) -> str:
    """A plausible command that the engine rejects: the student's typical mistakes."""
    places = sorted(c[len("go to "):] for c in admissible if c.startswith("go to "))
    elsewhere = [p for p in places if p != expert.location] or ["cabinet 1"]
    place = rng.choice(elsewhere)
    here = expert.location or place
    target = expert.holding or f"{expert.target} {rng.randint(1, 9)}"
    candidates = [
        f"take {expert.target} {rng.randint(1, 9)} from {here}",  # an object that is not here
        f"move {target} to {place}",  # not holding it, or not at that place
        f"open {place}",  # a receptacle that is not here
        f"{rng.choice(['clean', 'heat', 'cool'])} {target} with {place}",
    ]
    if expert.location:
        candidates.append(f"go to {expert.location}")  # already there
    if expert.lamp:
        candidates.append(f"use {expert.lamp} {rng.randint(1, 3)}")
    allowed = {normalize_action(a) for a in admissible}
    candidates = [c for c in candidates if normalize_action(c) not in allowed]
    return rng.choice(candidates) if candidates else f"take {expert.target} 99 from {kind_of(place)} 99"


def _noisy_command(rng: random.Random, expert: ExploringExpert, admissible: list[str], previous: str | None,
                   settings: JudgeDataSettings) -> tuple[str, str, str]:
    """(command to execute, the expert's own command, kind of noise)."""
    own = expert.choose(admissible)
    draw = rng.random()
    if draw < settings.weak_prob:
        avoid = {normalize_action(own), normalize_action(previous or "")}
        off_plan = [a for a in admissible if a.startswith(OFF_PLAN_VERBS) and normalize_action(a) not in avoid]
        if off_plan:
            return rng.choice(sorted(off_plan)), own, "off_plan"
    elif draw < settings.weak_prob + settings.strong_prob:
        if previous is not None and normalize_action(previous) != normalize_action(own) \
                and rng.random() < settings.repeat_share:
            return previous, own, "repeat"
        return _invalid_command(rng, expert, admissible), own, "invalid"
    return own, own, "expert"


def play_noisy_episodes(suite_root: str | Path, settings: JudgeDataSettings, *, split: str = "train",
                        first_game: int = 0, num_games: int | None = None, seed: int = 0) -> list[NoisyEpisode]:
    """Play games[first_game:first_game + num_games] of the split, in round-robin order over task
    types, with the noisy expert, in lock-step."""
    games = interleave_task_types(discover_games(suite_root, split).games)[first_game:]
    games = games[:num_games] if num_games is not None else games
    if not games:
        raise ValueError(f"no {split} games from index {first_game} in {suite_root}; lower heldout_games/first_game")
    rng = random.Random(seed)
    experts = [ExploringExpert(g.task_type, g.params) for g in games]
    with EnvPool(num_workers=settings.num_workers, max_steps=settings.max_steps) as pool:
        states = pool.reset([g.gamefile for g in games])
        for expert, state in zip(experts, states, strict=True):
            expert.observe(state.text)
        episodes = [NoisyEpisode(g.gamefile, s.task, g.task_type, failed=s.failed)
                    for g, s in zip(games, states, strict=True)]
        while not pool.all_done:
            before = [(s.text, list(s.admissible)) for s in states]
            plans: list[tuple[str, str, str] | None] = []
            for i, state in enumerate(states):
                turns = episodes[i].turns
                previous = turns[-1].action if turns else None
                running = not (state.done or state.failed)
                plans.append(_noisy_command(rng, experts[i], state.admissible, previous, settings) if running else None)
            states = pool.step([p[0] if p else None for p in plans])
            for i, plan in enumerate(plans):
                if plan is None or states[i].failed:
                    episodes[i].failed = episodes[i].failed or states[i].failed
                    continue
                action, own, kind = plan
                feedback = states[i].text
                turns = episodes[i].turns
                previous = turns[-1].action if turns else None
                if feedback.strip() != INVALID_FEEDBACK:
                    experts[i].update(action)  # only commands that took effect change the plan
                turns.append(NoisyTurn(before[i][0], action, feedback, own, kind,
                                       label_of(action, feedback, own, previous), before[i][1]))
                episodes[i].won = states[i].won
    if all(e.failed for e in episodes):
        raise RuntimeError(f"every noisy episode failed in the env pool; the first: {episodes[0].failed}")
    return episodes


def episode_examples(episodes: list[NoisyEpisode], tokenizer, settings: JudgeSettings) -> tuple[list[list[dict]], list[int]]:
    """Judge prompts (exactly as judge_turns renders them) and label indices for every turn."""
    template = load_template(settings)
    messages_list, labels = [], []
    for episode in episodes:
        for t, turn in enumerate(episode.turns):
            history = [(u.observation, u.action) for u in episode.turns[:t]]
            _, messages = fitted_prompt(tokenizer, episode.task, history, turn.observation, turn.action,
                                        turn.feedback, settings, template)
            messages_list.append(messages)
            labels.append(turn.label)
    return messages_list, labels


def policy_judge_examples(episodes, tokenizer, settings: JudgeSettings,
                          turns: list[tuple[int, int]] | None = None) -> tuple[list[list[dict]], list[int]]:
    """Judge prompts and labels for the turns of a policy's own episodes (dagger.LabelledEpisode,
    e.g. the warm-start student's rollouts), labelled by `label_of` against the expert's command
    in each visited state: the judge measured on the distribution SAGE's gate reads. `turns`
    ((episode index, turn index) pairs, in the order wanted) picks some turns; None: all, in order."""
    template = load_template(settings)
    for episode in episodes:
        if len(episode.feedbacks) != len(episode.executed):
            raise ValueError("policy_judge_examples needs episodes with every turn's feedback "
                             "(LabelledEpisode.feedbacks, filled by dagger.labelled_rollouts)")
    if turns is None:
        turns = [(i, t) for i, episode in enumerate(episodes) for t in range(len(episode.executed))]
    messages_list, labels = [], []
    for i, t in turns:
        episode = episodes[i]
        action, feedback = episode.executed[t], episode.feedbacks[t]
        history = list(zip(episode.observations[:t], episode.executed[:t], strict=True))
        _, messages = fitted_prompt(tokenizer, episode.task, history, episode.observations[t], action,
                                    feedback, settings, template)
        messages_list.append(messages)
        labels.append(label_of(action, feedback, episode.labels[t], episode.executed[t - 1] if t else None))
    return messages_list, labels


def build_judge_examples(suite_root: str | Path, tokenizer, settings: JudgeSettings, num_games: int | None = None,
                         seed: int = 0, *, data: JudgeDataSettings | None = None, split: str = "train",
                         first_game: int = 0) -> tuple[list[list[dict]], list[int]]:
    """(judge chat messages, label index 0 Skip / 1 Weak / 2 Strong) from noisy expert episodes."""
    data = data or JudgeDataSettings()
    episodes = play_noisy_episodes(suite_root, data, split=split, first_game=first_game, num_games=num_games, seed=seed)
    return episode_examples(episodes, tokenizer, settings)


def judge_sft_data(suite_root: str | Path, tokenizer, settings: JudgeSettings, num_games: int | None = None,
                   seed: int = 0, **kwargs) -> list[Datum]:
    """SFT data: each judge prompt with the label word as the reply (kwargs as build_judge_examples)."""
    messages, labels = build_judge_examples(suite_root, tokenizer, settings, num_games, seed, **kwargs)
    return labelled_data(messages, [settings.labels[label] for label in labels], tokenizer)


def judge_teacher_data(suite_root: str | Path, tokenizer, train_episodes: list[dict] | None = None, *,
                       settings: JudgeSettings | None = None, data: JudgeDataSettings | None = None) -> list[Datum]:
    """prepare's `extra_teacher_data(tokenizer, train_episodes)` (bind suite_root with partial):
    judge SFT examples from train games after the held-out ones; the episodes are not used."""
    settings, data = settings or JudgeSettings(), data or JudgeDataSettings()
    messages, labels = build_judge_examples(suite_root, tokenizer, settings, data.num_games, data.seed, data=data,
                                            first_game=data.heldout_games)
    if data.max_examples is not None and len(labels) > data.max_examples:
        keep = sorted(random.Random(data.seed).sample(range(len(labels)), data.max_examples))
        messages, labels = [messages[i] for i in keep], [labels[i] for i in keep]
    return labelled_data(messages, [settings.labels[label] for label in labels], tokenizer)


def heldout_judge_examples(suite_root: str | Path, tokenizer, settings: JudgeSettings | None = None,
                           data: JudgeDataSettings | None = None) -> tuple[list[list[dict]], list[int]]:
    """Examples from the held-out first train games (another noise seed) for judge_accuracy."""
    settings, data = settings or JudgeSettings(), data or JudgeDataSettings()
    return build_judge_examples(suite_root, tokenizer, settings, data.heldout_games, data.seed + 1, data=data)


def judge_data_key(settings: JudgeSettings, data: JudgeDataSettings) -> str:
    """A string naming everything that makes the judge examples (for prepare's `extra_key`): the
    template's text, not its path, so a clone elsewhere finds the same cache (and shipped) entries."""
    named = {k: v for k, v in asdict(settings).items() if k != "template"}
    return repr(({**named, "template_text": load_template(settings)}, asdict(data)))


def label_counts(labels: list[int]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(i, 0) for i, name in enumerate(LABEL_NAMES)}


@torch.no_grad()
def judge_accuracy(teacher, tokenizer, examples: tuple[list[list[dict]], list[int]], settings: JudgeSettings, *,
                   batch_size: int = 32, device: torch.device | str | None = None) -> dict:
    """Argmax accuracy of the judge on labelled examples: overall, per label, and counts."""
    messages_list, labels = examples
    if not labels:
        raise ValueError("judge_accuracy got no examples")
    chat = chat_tokens(tokenizer)
    prompts = [chat.encode(judge_prompt_text(tokenizer, messages)) for messages in messages_list]
    probs_N_3 = label_probs(teacher, prompts, label_token_ids(tokenizer, settings.labels), pad_id=chat.pad_id,
                            batch_size=batch_size, device=device)
    labels_N = torch.tensor(labels)
    hit_N = (probs_N_3.argmax(-1) == labels_N).float()
    report: dict = {"all": hit_N.mean().item(), "count": len(labels)}
    for i, name in enumerate(LABEL_NAMES):
        chosen = labels_N == i
        report[name] = hit_N[chosen].mean().item() if chosen.any() else float("nan")
        report[f"count_{name}"] = int(chosen.sum())
    report["true_label_prob"] = probs_N_3.gather(1, labels_N[:, None]).mean().item()
    return report


def recovery_teacher_data(suite_root: str | Path, tokenizer, train_episodes: list[dict] | None = None, *,
                          prompt, data: JudgeDataSettings, first_game: int = 0, layout: str = "window") -> list[Datum]:
    """prepare's `extra_teacher_data`: states reached by the noisy expert (after invalid, repeated
    or off-plan commands), each labelled with the expert's own next command, so the teacher learns
    to recover from the mistakes a student makes (DAgger-style); the episodes given are not used."""
    from harness.default.sft import recovery_data

    episodes = play_noisy_episodes(suite_root, data, first_game=first_game, num_games=data.num_games, seed=data.seed)
    return recovery_data(episodes, tokenizer, prompt, layout)
