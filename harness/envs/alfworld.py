"""ALFWorld behind the `Environment` seam (base.py): the json_2.1.1 layout (games.py), the
textworld engine with ALFWorld's wrappers, its six task types and the verl-agent wording.

`alfworld` is a real download, `alfworld_synth` the generated offline suite: the same layout,
engine and words, so both names are this one environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from harness.envs import games
from harness.envs.base import Wording, register

WORDING = Wording(
    task_prefix="Your task is to: ",
    observation_prefix="Observation: ",
    action_prefix="Action: ",
    admissible_prefix="Admissible actions: ",
    # verl-agent's wording for instruction-tuned LLMs, shortened
    think_action_instruction=(
        "You are an expert agent operating in the ALFRED Embodied Environment. "
        "First reason step by step about the current situation inside <think> </think> tags. "
        "Then choose one admissible action for the current step and give it inside "
        "<action> </action> tags."
    ),
    navigation_prefixes=("go to ", "examine ", "inventory", "look", "help"),
)

_TASK_RE = re.compile(r"Your task is to:\s*(.*?)\s*$", re.S)
_BANNER = "-= Welcome to TextWorld, ALFRED! =-"


def make_textworld_env(gamefile: str, with_plan: bool):
    """The raw textworld env of one game with ALFWorld's wrappers (AlfredDemangler, AlfredInfos)."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"],
                               policy_commands=with_plan)
    return textworld.start(gamefile, infos, wrappers=[AlfredDemangler(), AlfredInfos])


class TextWorldGame:
    """One ALFWorld game in textworld, answering plain dicts (the `Game` protocol)."""

    def __init__(self, gamefile: str, with_plan: bool) -> None:
        self.with_plan = with_plan
        self.env = make_textworld_env(gamefile, with_plan)

    def _answer(self, state, done: bool) -> dict:
        result = {
            "text": state.feedback if state.feedback is not None else "",
            "admissible": [str(c) for c in (state.get("admissible_commands") or [])],
            "won": bool(state.get("won")),
            "done": bool(done),
        }
        if self.with_plan:
            result["plan"] = [str(c) for c in (state.get("policy_commands") or [])]
        return result

    def reset(self) -> dict:
        return self._answer(self.env.reset(), False)

    def step(self, action: str) -> dict:
        state, _reward, done = self.env.step(action)
        return self._answer(state, done)

    def close(self) -> None:
        self.env.close()


class ALFWorld:
    """The ALFWorld environment (text games of ALFRED's household tasks)."""

    name = "alfworld"
    task_types = games.TASK_TYPES
    wording = WORDING

    def resolve_data_root(self, data_root: str | os.PathLike | None) -> Path:
        return games.resolve_data_root(data_root)

    def discover(self, root: Path, split: str, task_types=None, on_malformed: str = "skip") -> games.GameList:
        return games.discover_games(root, split, task_types, on_malformed)

    def setup_worker(self, fast_engine: bool, cache_dir: str | None = None) -> None:
        if fast_engine:
            from harness.envs import engine_cache

            engine_cache.install(disk_dir=cache_dir)

    def make_game(self, gamefile: str, with_plan: bool) -> TextWorldGame:
        return TextWorldGame(gamefile, with_plan)

    def split_initial(self, text: str) -> tuple[str, str]:
        match = _TASK_RE.search(text)
        task = match.group(1).strip() if match else ""
        observation = text[: match.start()] if match else text
        return observation.replace(_BANNER, "").strip(), task


ALFWORLD = ALFWorld()
register("alfworld", ALFWORLD)
register("alfworld_synth", ALFWORLD)
