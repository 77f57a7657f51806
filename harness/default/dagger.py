"""DAgger for the tiny teacher, and how far a model agrees with the expert off its own states.

The exploring expert (harness/envs/experts.py) is a function of the visible history, so it can
label ANY state: roll out a policy (the teacher greedy or sampled, the warm-start student),
replay the expert along the commands that took effect, and take its next command in every
visited state. Training on those labels is DAgger (Ross et al., 2011), the standard remedy for
the compounding errors of imitation: the failures the teacher's own episodes show are loops
after "Nothing happens." and the wrong object or instance, states its demonstrations never hold.

In the `full` layout a datum is a whole episode, so a label that differs from the executed
command cannot sit in the sequence (the later turns saw the executed one). Each labelled
episode gives its whole sequence with the loss on the turns where the policy did what the
expert would (the rest are context), plus, for each turn where it did not, the episode up to
that turn followed by the expert's command (`dagger_data`).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from harness.agent.prompt import PromptSettings, normalize_action
from harness.agent.rollout import RolloutSettings, episode_data, rollout
from harness.agent.trajectory import Datum
from harness.envs import EnvPool, GameInfo
from harness.envs.experts import ExploringExpert

INVALID_FEEDBACK = "Nothing happens."


@dataclass
class LabelledEpisode:
    """A policy's episode with the expert's command in every state it visited."""

    task: str
    task_type: str
    observations: list[str]  # what the policy saw before each turn
    admissible: list[list[str]]
    executed: list[str]  # the policy's commands
    labels: list[str]  # the expert's command in each of those states
    won: bool
    source: str = ""
    extra: dict = field(default_factory=dict)
    feedbacks: list[str] = field(default_factory=list)  # the engine's answer to each command

    @property
    def agree(self) -> list[bool]:
        return [normalize_action(a) == normalize_action(b) for a, b in zip(self.executed, self.labels, strict=True)]


def expert_labels(game: GameInfo, first_observation: str, turns) -> list[str]:
    """The expert's next command in each state of an episode played by any policy; `turns` are
    (admissible, executed command, feedback) triples. Only commands that took effect move it on."""
    expert = ExploringExpert(game.task_type, game.params)
    expert.observe(first_observation)
    labels = []
    for admissible, command, feedback in turns:
        labels.append(expert.choose(admissible))
        if feedback.strip() != INVALID_FEEDBACK:
            expert.update(command)
    return labels


def labelled_rollouts(policy, tokenizer, pool: EnvPool, games: list[GameInfo], settings: RolloutSettings,
                      prompt: PromptSettings, *, seed: int = 0, source: str = "", batch: int = 32) -> list[LabelledEpisode]:
    """Roll the policy out on the games (`batch` envs at a time) and label every visited state."""
    episodes = []
    for start in range(0, len(games), batch):
        chunk = games[start:start + batch]
        first = [s.text for s in pool.reset([g.gamefile for g in chunk])]  # deterministic: what rollout sees
        for g, observation, trajectory in zip(chunk, first, rollout(policy, tokenizer, pool, chunk, settings, prompt,
                                                                     seed=seed + start), strict=True):
            if trajectory.failed or not trajectory.turns:
                continue
            turns = [(t.admissible, t.action, t.feedback) for t in trajectory.turns]
            observations = [observation] + [t.feedback for t in trajectory.turns[:-1]]
            episodes.append(LabelledEpisode(trajectory.task, g.task_type, observations,
                                            [list(t.admissible) for t in trajectory.turns],
                                            [t.action for t in trajectory.turns],
                                            expert_labels(g, observation, turns), trajectory.won, source,
                                            feedbacks=[t.feedback for t in trajectory.turns]))
    return episodes


def _state_datum(episode: LabelledEpisode, turn: int, tokenizer, prompt: PromptSettings, layout: str,
                 index: int) -> Datum:
    """The episode as played up to `turn`, then the expert's command there (the only trained turn)."""
    steps = [(o, a, c) for o, a, c in zip(episode.observations[:turn], episode.admissible[:turn],
                                          episode.executed[:turn], strict=True)]
    steps.append((episode.observations[turn], episode.admissible[turn], episode.labels[turn]))
    flags = [False] * turn + [True]
    return episode_data(tokenizer, episode.task, steps, layout, prompt, trajectory_index=index, train_turns=flags)[0]


def dagger_data(episodes: list[LabelledEpisode], tokenizer, prompt: PromptSettings, layout: str = "full",
                max_corrections: int | None = None, seed: int = 0) -> list[Datum]:
    """SFT data from labelled episodes: the agreeing turns in place, one datum per disagreeing
    turn (at most `max_corrections` per episode, a seeded random subset)."""
    rng = random.Random(seed)
    data: list[Datum] = []
    for index, episode in enumerate(episodes):
        agree = episode.agree
        if any(agree):
            steps = list(zip(episode.observations, episode.admissible, episode.executed, strict=True))
            data += episode_data(tokenizer, episode.task, steps, layout, prompt, trajectory_index=index,
                                 train_turns=agree)
        wrong = [t for t, ok in enumerate(agree) if not ok]
        if max_corrections is not None and len(wrong) > max_corrections:
            wrong = sorted(rng.sample(wrong, max_corrections))
        data += [_state_datum(episode, t, tokenizer, prompt, layout, index) for t in wrong]
    return data


def state_sample(episodes: list[LabelledEpisode], tokenizer, prompt: PromptSettings, layout: str = "full",
                 per_episode: int = 4, seed: int = 0) -> list[Datum]:
    """Up to `per_episode` states of each episode (seeded, uniform over its turns), each as the
    episode up to there followed by the expert's command: teacher-forced, a model's exact match
    on the command is whether its greedy reply there equals the expert's."""
    rng = random.Random(seed)
    data = []
    for index, episode in enumerate(episodes):
        turns = range(len(episode.executed))
        for t in sorted(rng.sample(list(turns), min(per_episode, len(turns)))):
            data.append(_state_datum(episode, t, tokenizer, prompt, layout, index))
    return data


@dataclass(frozen=True)
class DaggerSettings:
    """DAgger rounds after the teacher's SFT (every field is a knob and, with rounds > 0, part of
    the teacher's cache key)."""

    rounds: int = 0
    """Rounds of roll out -> label -> aggregate -> fine-tune; 0 = off."""
    games: int = 200
    """Train games rolled out per round and per policy (a new slice each round)."""
    temperatures: tuple[float, ...] = (0.0, 1.0)
    """The teacher's rollouts per game: 0 = greedy; others sample at that temperature."""
    steps: int = 300
    """SFT steps per round, continuing from the current teacher, on the demonstrations plus
    every DAgger datum so far."""
    lr: float = 2e-4
    max_corrections: int | None = 8
    """Disagreeing turns per episode that become a datum (the rest of a loop adds little)."""
    dagger_share: float = 0.5
    """Share of each SFT batch drawn from the DAgger data (the rest from the demonstrations)."""
    student_states: bool = False
    """Also roll out the warm-start student each round (same games, same temperatures) and label
    its states: the teacher then learns the expert's command where the student goes, the states
    OPD will ask it about."""
    judge_turns: bool = False
    """Also make judge examples of the round's labelled turns (Skip / Weak / Strong by
    judge_data.label_of against the expert's command): the judge then learns the turns SAGE's
    gate reads (the student's), and the DAgger mix no longer dilutes it (without them the judge
    stopped saying Weak)."""
    judge_per_episode: int = 4
    """Judge examples per labelled episode (a seeded sample of all their turns), with judge_turns."""


def mixed_data(base: list[Datum], extra: list[Datum], share: float, total: int, seed: int) -> list[Datum]:
    """`total` data with about `share` from `extra` (drawn with replacement when short) and the
    rest from `base`: the rounds' few hundred corrections are not drowned by thousands of demos."""
    rng = random.Random(seed)
    k = round(share * total) if extra else 0
    picked = [extra[rng.randrange(len(extra))] for _ in range(k)]
    picked += [base[rng.randrange(len(base))] for _ in range(total - k)]
    rng.shuffle(picked)
    return picked


def episode_record(episode: LabelledEpisode, round_index: int) -> dict:
    """A labelled episode as one JSON line of a DAgger stage's `dagger_episodes.jsonl`."""
    return {"round": round_index, **asdict(episode)}


def load_episode_records(path) -> list[tuple[int, LabelledEpisode]]:
    """(round, episode) pairs written by `episode_record`, in file order."""
    import json
    from pathlib import Path

    records = []
    for line in Path(path).read_text().splitlines():
        blob = json.loads(line)
        records.append((blob.pop("round"), LabelledEpisode(**blob)))
    return records


def round_data(round_index: int, episodes: list[LabelledEpisode], tokenizer, settings: DaggerSettings,
               prompt: PromptSettings, layout: str, seed: int, judge_data=None) -> list[Datum]:
    """What one round adds to the aggregated DAgger data: the corrections of its episodes and,
    with `settings.judge_turns`, judge examples of a seeded sample of their turns
    (`judge_data(episodes, turns) -> list[Datum]` for (episode, turn) pairs; prepare binds the
    judge's settings). A function of the round's episodes and seed only, so a later stage
    rebuilds it exactly."""
    data = dagger_data(episodes, tokenizer, prompt, layout, settings.max_corrections, seed=seed + round_index)
    if settings.judge_turns:
        if judge_data is None:
            raise ValueError("DaggerSettings.judge_turns needs judge examples (model.tiny.judge_examples > 0)")
        turns = [(i, t) for i, episode in enumerate(episodes) for t in range(len(episode.executed))]
        budget = settings.judge_per_episode * len(episodes)
        if len(turns) > budget:  # only the sampled turns are made into prompts
            turns = random.Random(seed + 104729 + round_index).sample(turns, budget)
        data += judge_data(episodes, turns)
    return data


def dagger_round(round_index: int, teacher, tokenizer, pool: EnvPool, games: list[GameInfo],
                 base_data: list[Datum], aggregated: list[Datum], settings: DaggerSettings,
                 prompt: PromptSettings, layout: str, max_new_tokens: int, max_turns: int, batch_size: int,
                 seed: int = 0, log=print, student=None, judge_data=None) -> tuple[dict, list[LabelledEpisode]]:
    """Round `round_index` on `teacher` in place: roll out its slice of `games`, label, add the
    round's data to `aggregated` (the earlier rounds' data, extended in place), fine-tune on the
    demonstrations plus all of it. Returns the round's report and its labelled episodes. With
    `settings.student_states`, `student` (a frozen model) is rolled out and labelled too."""
    if settings.student_states and student is None:
        raise ValueError("DaggerSettings.student_states needs the warm-start student")
    import time

    from harness.default.sft import SFTSettings, train_sft

    r = round_index
    started = time.perf_counter()
    chunk = games[r * settings.games:(r + 1) * settings.games] or games[: settings.games]
    labelled = []
    for temperature in settings.temperatures:
        rollout_settings = RolloutSettings(layout=layout, greedy=temperature == 0, temperature=temperature or 1.0,
                                           max_new_tokens=max_new_tokens, max_turns=max_turns)
        labelled += labelled_rollouts(teacher, tokenizer, pool, chunk, rollout_settings, prompt,
                                      seed=seed + 7919 * r, source=f"teacher t={temperature}", batch=64)
        if settings.student_states:
            labelled += labelled_rollouts(student, tokenizer, pool, chunk, rollout_settings, prompt,
                                          seed=seed + 7919 * r, source=f"student t={temperature}", batch=64)
    new = round_data(r, labelled, tokenizer, settings, prompt, layout, seed, judge_data)
    aggregated += new
    own = [e for e in labelled if e.source.startswith("teacher")]
    turns = sum(len(e.executed) for e in own)
    report = {"round": r, "episodes": len(labelled), "won": sum(e.won for e in own) / max(1, len(own)),
              "agree": sum(sum(e.agree) for e in own) / max(1, turns), "new_data": len(new),
              "dagger_data": len(aggregated), "rollout_s": time.perf_counter() - started}
    for temperature in settings.temperatures:
        mine = [e for e in labelled if e.source == f"teacher t={temperature}"]
        report[f"won_t{temperature}"] = sum(e.won for e in mine) / max(1, len(mine))
        if settings.student_states:  # the fixed student on the same games: how hard the slice is
            theirs = [e for e in labelled if e.source == f"student t={temperature}"]
            report[f"student_won_t{temperature}"] = sum(e.won for e in theirs) / max(1, len(theirs))
    log(f"dagger round {r}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in report.items()))
    sft = SFTSettings(steps=settings.steps, batch_size=batch_size, lr=settings.lr, warmup_steps=20, seed=seed + r)
    data = mixed_data(base_data, aggregated, settings.dagger_share, settings.steps * batch_size, seed + r)
    started = time.perf_counter()
    losses = train_sft(teacher, data, sft, tokenizer.pad_token_id)
    report |= {"final_loss": losses[-1], "sft_s": time.perf_counter() - started}
    log(f"dagger round {r}: fine-tuned {settings.steps} steps in {report['sft_s']:.0f} s, loss {losses[-1]:.3f}")
    return report, labelled
