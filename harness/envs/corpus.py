"""Every kind of text the engine prints, for a tokenizer's corpus.

Won demonstrations never show the engine's answers to a failed or idle command ("Nothing
happens.", "You are not carrying anything.", "You are facing the ..."), yet a student or a
sampling teacher sees them all the time; a tokenizer trained on demonstrations only maps their
words to `<unk>`. `engine_texts` plays seeded random commands through the real engine (admissible
ones, the idle commands `look`/`inventory`/`examine`/`help`, and commands the engine rejects) and
returns every observation, feedback and admissible command it saw.
"""

from __future__ import annotations

import random

from harness.envs.games import GameInfo
from harness.envs.pool import EnvPool

IDLE_COMMANDS = ("look", "inventory", "help")
REJECTED_COMMANDS = ("take unicorn 1 from sofa 9", "go to nowhere 1", "open apple 1", "use bed 1")


def _random_command(admissible: list[str], rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.15:
        return rng.choice(IDLE_COMMANDS)
    if roll < 0.3:
        return rng.choice(REJECTED_COMMANDS)
    if roll < 0.4:
        # `examine` an object named in an admissible command: the engine's description of it
        words = [w for c in admissible for w in c.split()[1:3] if w.isalpha() and w not in ("to", "from")]
        if words:
            return f"examine {rng.choice(words)} 1"
    return rng.choice(sorted(admissible)) if admissible else "look"


def engine_texts(pool: EnvPool, games: list[GameInfo], steps: int = 25, seed: int = 0) -> list[str]:
    """Play `steps` seeded random commands in each game (all in lock-step); every text seen.

    The same games, steps and seed give the same texts in the same order."""
    if not games:
        raise ValueError("engine_texts needs at least one game")
    rng = random.Random(seed)
    states = pool.reset([g.gamefile for g in games])
    texts = [t for s in states for t in (s.task, s.text, *s.admissible)]
    for _ in range(steps):
        if pool.all_done:
            break
        actions = [None if (s.done or s.failed) else _random_command(s.admissible, rng) for s in states]
        states = pool.step(actions)
        texts += [t for s, a in zip(states, actions, strict=True) if a is not None
                  for t in (a, s.text, *s.admissible)]
    return texts
