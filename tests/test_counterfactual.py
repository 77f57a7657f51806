"""Counterfactual demonstrations (harness/default/counterfactual.py), on a hand-written episode."""

from __future__ import annotations

import random

from harness.default.counterfactual import (
    _edited_turns,
    counterfactual_episodes,
    expert_params,
    listed_items,
    listed_receptacle,
    with_items,
)

FIRST = ("You are in the middle of a room. Looking quickly around you, you see a bed 1, a desk 1, "
         "a drawer 1, and a shelf 1.")
GO = ["go to bed 1", "go to desk 1", "go to drawer 1", "go to shelf 1"]


def _episode() -> dict:
    """put a book in shelf: bed 1 (a pillow), desk 1 (a pen), drawer 1 closed (a book inside)."""
    turns = [
        (FIRST, GO, "go to bed 1"),
        ("You arrive at bed 1. On the bed 1, you see a pillow 1.", GO + ["take pillow 1 from bed 1"], "go to desk 1"),
        ("You arrive at desk 1. On the desk 1, you see a pen 2, and a cd 1.",
         GO + ["take pen 2 from desk 1", "take cd 1 from desk 1"], "go to drawer 1"),
        ("You arrive at drawer 1. The drawer 1 is closed.", GO + ["open drawer 1"], "open drawer 1"),
        ("You open the drawer 1. The drawer 1 is open. In it, you see a book 3.",
         GO + ["close drawer 1", "take book 3 from drawer 1"], "take book 3 from drawer 1"),
        ("You pick up the book 3 from the drawer 1.", GO + ["close drawer 1"], "go to shelf 1"),
        ("You arrive at shelf 1. On the shelf 1, you see nothing.", GO + ["move book 3 to shelf 1"],
         "move book 3 to shelf 1"),
    ]
    return {"task": "put some book on shelf.", "task_type": "pick_and_place_simple", "won": True, "gamefile": "g",
            "turns": [{"observation": o, "admissible": a, "action": c, "feedback": "", "won": False}
                      for o, a, c in turns]}


def test_listings_are_read_and_rewritten_in_the_engines_wording():
    obs = "You arrive at desk 1. On the desk 1, you see a pen 2, and a cd 1."
    assert listed_items(obs) == ["pen 2", "cd 1"] and listed_receptacle(obs) == "desk 1"
    opened = "You open the drawer 1. The drawer 1 is open. In it, you see a book 3."
    assert listed_items(opened) == ["book 3"] and listed_receptacle(opened) == "drawer 1"
    assert listed_items("You arrive at shelf 1. On the shelf 1, you see nothing.") == []
    assert listed_items("You arrive at drawer 1. The drawer 1 is closed.") is None
    assert with_items(obs, ["pen 2", "book 7", "cd 1"]) == \
        "You arrive at desk 1. On the desk 1, you see a pen 2, a book 7, and a cd 1."
    assert with_items(obs, ["book 7"]) == "You arrive at desk 1. On the desk 1, you see a book 7."
    assert with_items(opened, []) == "You open the drawer 1. The drawer 1 is open. In it, you see nothing."


def test_the_goal_is_read_off_the_demonstrations_own_commands():
    assert expert_params(_episode()) == {"object_target": "book", "parent_target": "shelf"}


def test_each_search_turn_is_edited_and_relabelled_by_the_expert():
    """Turns 1 and 2 (the expert went on) get a book in view -> take it; turn 4 (the expert took
    book 3 from the open drawer) loses it -> the expert goes on to the next listed place, shelf 1.
    Turn 3 (a closed drawer) lists nothing and turn 6 is past the search."""
    episode = _episode()
    records = _edited_turns(episode, expert_params(episode), ["book", "cd", "pen", "pillow", "vase"], random.Random(0))
    assert [(r["counterfactual"], len(r["turns"])) for r in records] == [("insert", 2), ("insert", 3), ("remove", 5)]
    for record in records:
        assert record["turns"][:-1] == episode["turns"][:len(record["turns"]) - 1]  # the prefix as played
    bed, desk, drawer = (r["turns"][-1] for r in records)
    number = bed["action"].split(" ")[2]
    assert bed["action"] == f"take book {number} from bed 1"
    assert sorted(listed_items(bed["observation"])) == sorted(["pillow 1", f"book {number}"])
    assert bed["admissible"][-1] == bed["action"]
    assert desk["action"].startswith("take book ") and desk["action"].endswith(" from desk 1")
    assert drawer["action"] == "go to shelf 1"  # after drawer 1 in the room's listing
    (swapped,) = listed_items(drawer["observation"])
    assert swapped.split(" ")[0] in ("cd", "pen", "pillow", "vase")  # never the task's book or shelf
    assert f"take {swapped} from drawer 1" in drawer["admissible"]
    assert not any(c.startswith("take book") for c in drawer["admissible"])


def test_the_count_is_split_between_the_edits_and_zero_is_none():
    episodes = [_episode() for _ in range(4)]  # 8 inserts and 4 removes available
    chosen = counterfactual_episodes(episodes, 6, seed=1)
    assert sorted(r["counterfactual"] for r in chosen) == ["insert"] * 3 + ["remove"] * 3
    more = counterfactual_episodes(episodes, 10, seed=1)  # 4 removes only: the inserts fill the rest
    assert sorted(r["counterfactual"] for r in more) == ["insert"] * 6 + ["remove"] * 4
    assert counterfactual_episodes(episodes, 0) == []
    lost = [{**_episode(), "won": False}]
    assert counterfactual_episodes(lost, 5) == []
