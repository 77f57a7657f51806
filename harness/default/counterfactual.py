"""Counterfactual demonstrations: the expert's episodes with the object in view edited, relabelled.

The teacher's commonest mistake on games it has not seen (results/diagnosis/levers/session17/) is
not to take the task's object when it is in view ("You arrive at bed 1. On the bed 1, you see a
baseballbat 1." for "look at baseballbat under the desklamp" -> "go to desk 1"), and to take one
that is not there. In a demonstration the object's place is fixed by the game, so which
receptacle holds it is confounded with how far the search has gone; nothing in the data says
that the choice depends on the list in view. These copies cut the confound: a demonstration's
prefix up to one search turn, with that turn's observation edited, and the exploring expert's
command for the edited state as the label (the expert is a function of the visible text and
the admissible commands, so it labels any state):

- `insert`: where the expert went on (nothing to take here), a target instance with a fresh
  number joins the list in view (and its `take` the admissible commands): the label is `take`;
- `remove`: where the expert took the object, every target instance in view is replaced by an
  object of another kind (and the `take` commands with it): the label is the expert's next
  place to search (or to open).

Only states of the search phase with a listing of the current receptacle are edited; the prefix
is the demonstration as played. Each copy is an episode record of harness.envs.demos, ending at
the edited turn, so it goes through the same `demo_data` as every demonstration.
"""

from __future__ import annotations

import random
import re

from harness.envs.experts import ExploringExpert, kind_of

_LISTING_RE = re.compile(r"(?:On the ([a-z]+ \d+), you see |The ([a-z]+ \d+) is open\. In it, you see )(.*?)\.(\s*)$", re.S)
_ITEM_RE = re.compile(r"an? ([a-z]+ \d+)")
_TAKE_RE = re.compile(r"^take ([a-z]+ \d+) from ([a-z]+ \d+)$")
_MOVE_RE = re.compile(r"^move [a-z]+ \d+ to ([a-z]+) \d+$")
_USE_RE = re.compile(r"^use ([a-z]+) \d+$")
EDITS = ("insert", "remove")


def _listing(observation: str) -> tuple[str, list[str]] | None:
    """(the receptacle, its objects) of the observation's listing of a receptacle's content."""
    match = _LISTING_RE.search(observation)
    if match is None:
        return None
    body = match.group(3).strip()
    return match.group(1) or match.group(2), [] if body == "nothing" else _ITEM_RE.findall(body)


def listed_items(observation: str) -> list[str] | None:
    """The objects of the observation's listing of a receptacle ('a apple 1, and a knife 2' ->
    ['apple 1', 'knife 2']; 'nothing' -> []); None when it lists no receptacle's content."""
    listing = _listing(observation)
    return None if listing is None else listing[1]


def render_items(items: list[str]) -> str:
    """The engine's wording of a list: 'a x 1', 'a x 1, and a y 2', 'a x 1, a y 2, and a z 3'."""
    if not items:
        return "nothing"
    words = [f"a {item}" for item in items]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + ", and " + words[-1]


def with_items(observation: str, items: list[str]) -> str:
    """The observation with its listing's objects replaced by `items` (the rest kept)."""
    match = _LISTING_RE.search(observation)
    assert match is not None, observation
    return observation[:match.start(3)] + render_items(items) + "." + match.group(4)


def listed_receptacle(observation: str) -> str | None:
    """The receptacle whose content the observation lists ('On the bed 1, you see ...', 'The
    drawer 2 is open. In it, you see ...'), or None."""
    listing = _listing(observation)
    return None if listing is None else listing[0]


def expert_params(episode: dict) -> dict[str, str] | None:
    """The exploring expert's goal, read off a won demonstration's own commands: the kind it took
    first, where it put things, the lamp it used. None when the episode took nothing."""
    actions = [t["action"] for t in episode["turns"]]
    taken = [m.group(1) for a in actions for m in [_TAKE_RE.match(a)] if m]
    if not taken:
        return None
    params = {"object_target": kind_of(taken[0])}
    moved = [m.group(1) for a in actions for m in [_MOVE_RE.match(a)] if m]
    used = [m.group(1) for a in actions for m in [_USE_RE.match(a)] if m]
    if moved:
        params["parent_target"] = moved[-1]
    if used:
        params["toggle_target"] = used[-1]
    return params


def _edited_turns(episode: dict, params: dict[str, str], kinds: list[str], rng: random.Random) -> list[dict]:
    """Every editable search turn of one episode, as a counterfactual episode record each."""
    expert = ExploringExpert(episode["task_type"], params)
    target = params["object_target"]
    others = [k for k in kinds if k not in set(params.values()) and k not in episode["task"].split()]
    turns = episode["turns"]
    out = []
    for t, turn in enumerate(turns):
        expert.observe(turn["observation"])
        listing = _listing(turn["observation"]) if t > 0 else None
        if listing is not None and others and expert.phase == "find" and not expert.wrong:
            where, items = listing
            targets = [i for i in items if kind_of(i) == target]
            admissible = list(turn["admissible"])
            if targets and turn["action"].startswith(f"take {target} "):
                edit = "remove"
                swaps: dict[str, str] = {}
                for item in targets:  # a name not in view yet
                    swaps[item] = rng.choice([name for name in (f"{k} {n}" for k in others for n in range(1, 10))
                                              if name not in items and name not in swaps.values()])
                new_items = [swaps.get(i, i) for i in items]
                admissible = [f"take {swaps[m.group(1)]} from {m.group(2)}"
                              if (m := _TAKE_RE.match(c)) and m.group(1) in swaps else c for c in admissible]
            elif not targets and turn["action"].startswith(("go to ", "open ")):
                edit = "insert"
                number = rng.choice([n for n in range(1, 10) if f"{target} {n}" not in expert.placed])
                new_items = items[:]
                new_items.insert(rng.randint(0, len(items)), f"{target} {number}")
                admissible.append(f"take {target} {number} from {where}")
            else:
                edit = ""
            if edit:
                label = expert.choose(admissible)
                if edit == "remove" or label == f"take {target} {number} from {where}":
                    edited = {**turn, "observation": with_items(turn["observation"], new_items),
                              "admissible": admissible, "action": label, "feedback": "", "won": False}
                    out.append({**episode, "won": False, "counterfactual": edit, "turns": turns[:t] + [edited]})
        expert.update(turn["action"])
    return out


def counterfactual_episodes(episodes: list[dict], count: int, seed: int = 0) -> list[dict]:
    """Up to `count` counterfactual records from won demonstrations, half of each edit where the
    demonstrations allow it (a seeded sample of every editable turn)."""
    if count <= 0:
        return []
    kinds = sorted({kind_of(m.group(1)) for e in episodes for t in e["turns"] for c in t["admissible"]
                    for m in [_TAKE_RE.match(c)] if m})
    rng = random.Random(seed)
    pool: dict[str, list[dict]] = {edit: [] for edit in EDITS}
    for episode in episodes:
        params = expert_params(episode) if episode.get("won") else None
        if params is not None:
            for record in _edited_turns(episode, params, kinds, rng):
                pool[record["counterfactual"]].append(record)
    half = count // 2
    chosen = rng.sample(pool["insert"], min(len(pool["insert"]), count - min(half, len(pool["remove"]))))
    chosen += rng.sample(pool["remove"], min(len(pool["remove"]), count - len(chosen)))
    return chosen
