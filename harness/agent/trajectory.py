"""Trajectories and training data: the exact sampled token ids, never re-tokenized text.

A trajectory is what one env produced in one episode. Its training data is one `Datum` per
trajectory (layout `full`: each turn's prompt extends the previous, tinker-cookbook style) or
one `Datum` per turn (layout `window`: a bounded history, verl-agent style).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Turn:
    """One agent turn: the response it sampled and what the environment answered."""

    prompt_text: str  # what the policy was shown for this turn (for logs and the judge)
    response_ids: list[int]  # exact sampled ids, end-of-turn token included when sampled
    response_text: str
    action: str  # the parsed action sent to the engine (as written when unparseable)
    feedback: str  # the engine's answer to `action`
    admissible: list[str]  # admissible commands when the action was chosen
    parseable: bool = True
    admissible_action: bool = True  # action was among the admissible commands
    repeated: bool = False  # same action as the previous turn
    won_after: bool = False
    expert_action: str | None = None  # the planner's next action in this state (oracle_gate only)
    actor: str = "student"  # who produced the reply: student | teacher (MixedSampler, guided_opd)


@dataclass
class Datum:
    """One training sequence with per-token masks; all lists have the same length T."""

    token_ids: list[int]
    response_mask: list[int]  # 1 on tokens the trained policy sampled, 0 on prompt/observation/teacher-turn tokens
    turn_index: list[int]  # turn number (within the trajectory) of each response token, -1 elsewhere
    sample_logprobs: list[float]  # log p of each sampled token at sampling time, 0 elsewhere
    trajectory_index: int = 0

    def __post_init__(self) -> None:
        lengths = {len(self.token_ids), len(self.response_mask), len(self.turn_index), len(self.sample_logprobs)}
        if len(lengths) != 1:
            raise ValueError(f"Datum fields differ in length: {sorted(lengths)}")


@dataclass
class Trajectory:
    """One episode of one env: turns, outcome, and its training data."""

    gamefile: str
    task: str
    task_type: str
    turns: list[Turn] = field(default_factory=list)
    won: bool = False
    failed: str | None = None  # set when the env worker died: the episode counts as failed
    data: list[Datum] = field(default_factory=list)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def invalid_actions(self) -> int:
        return sum(1 for t in self.turns if not (t.parseable and t.admissible_action))

    @property
    def repeated_actions(self) -> int:
        return sum(1 for t in self.turns if t.repeated)


def collate(data: list[Datum], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad data into tensors named by shape.

    `turn_ids_B_T` numbers the turns of the whole batch 0..U-1 (U = number of distinct
    (datum trajectory, turn) pairs that have response tokens), -1 elsewhere, so per-turn
    signals (judge labels) can be gathered per token with one index.
    """
    if not data:
        raise ValueError("collate needs at least one Datum")
    T = max(len(d.token_ids) for d in data)
    B = len(data)
    tokens = torch.full((B, T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, T), dtype=torch.long)
    response = torch.zeros((B, T), dtype=torch.float32)
    turn_ids = torch.full((B, T), -1, dtype=torch.long)
    old_logp = torch.zeros((B, T), dtype=torch.float32)
    turn_keys: dict[tuple[int, int], int] = {}
    for b, d in enumerate(data):
        n = len(d.token_ids)
        tokens[b, :n] = torch.tensor(d.token_ids, dtype=torch.long)
        attention[b, :n] = 1
        response[b, :n] = torch.tensor(d.response_mask, dtype=torch.float32)
        old_logp[b, :n] = torch.tensor(d.sample_logprobs, dtype=torch.float32)
        for j, t in enumerate(d.turn_index):
            if t >= 0 and d.response_mask[j]:
                key = (d.trajectory_index, t)
                turn_ids[b, j] = turn_keys.setdefault(key, len(turn_keys))
    return {
        "tokens_B_T": tokens,
        "attention_mask_B_T": attention,
        "response_mask_B_T": response,
        "turn_ids_B_T": turn_ids,
        "old_logp_B_T": old_logp,
        "turn_keys_U": torch.tensor(list(turn_keys.keys()), dtype=torch.long).reshape(-1, 2),
    }
