"""Expert demonstrations played through the env pool, saved as plain JSONL.

One line per episode: {"gamefile", "task", "task_type", "expert", "won", "turns": [{
"observation", "admissible", "action", "feedback", "won"}]}. `observation` is what the
agent saw when it chose `action`; `feedback` is the engine's answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from harness.envs.experts import ExploringExpert
from harness.envs.games import GameInfo
from harness.envs.pool import EnvPool

EXPERTS = ("explorer", "planner")


def play_experts(pool: EnvPool, games: list[GameInfo], expert: str = "explorer") -> list[dict]:
    """Play one episode per game with the expert, all envs in lock-step; returns episodes."""
    if expert not in EXPERTS:
        raise ValueError(f"Unknown expert {expert!r}; choose one of {EXPERTS}.")
    if expert == "planner" and not pool.with_plan:
        raise ValueError("the planner expert needs EnvPool(with_plan=True)")
    states = pool.reset([g.gamefile for g in games])
    policies = [ExploringExpert(g.task_type, g.params) for g in games] if expert == "explorer" else None
    episodes = [
        {"gamefile": g.gamefile, "task": s.task, "task_type": g.task_type, "expert": expert,
         "won": False, "failed": s.failed, "turns": []}
        for g, s in zip(games, states, strict=True)
    ]
    while not pool.all_done:
        actions: list[str | None] = []
        for i, state in enumerate(states):
            if state.done or state.failed:
                actions.append(None)
            elif policies is not None:
                actions.append(policies[i].act(state.text, state.admissible))
            else:
                actions.append(state.plan[0] if state.plan else "look")
        before = [(s.text, list(s.admissible)) for s in states]
        states = pool.step(actions)
        for i, action in enumerate(actions):
            if action is None:
                continue
            episodes[i]["turns"].append({
                "observation": before[i][0], "admissible": before[i][1], "action": action,
                "feedback": states[i].text, "won": states[i].won,
            })
            episodes[i]["won"] = states[i].won
            episodes[i]["failed"] = states[i].failed
    return episodes


def save_jsonl(records: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write records as JSONL atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a bad line names the file and line number."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not valid JSON ({err})") from err
    return records
