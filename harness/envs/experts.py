"""Experts that make demonstrations: the planner and an exploring expert.

The planner (Fast Downward via the engine's `policy_commands`) is optimal and omniscient.
The exploring expert knows only the goal (the task sentence, as `pddl_params`) and what it
sees: it walks the receptacles in the order the room's first observation lists them
("Looking quickly around you, you see a bed 1, a drawer 2, ..."), cyclically from where it
stands, opens closed ones while it searches, and acts through the admissible commands. It
keeps no memory beyond what the episode's own text shows (where it stands, what it holds and
has placed), so a policy that sees the first observation and its own history can imitate it
exactly: the next place is the one listed after the current one. It is our
own code path, free of the two faults of alfworld 0.4.2's handcoded expert (the ignored
`expert_type` and the inventory tracked on `put` only, which loops on pick-two games).
"""

from __future__ import annotations

import re

_TOOLS = {  # task type -> (verb, receptacle kind)
    "pick_clean_then_place_in_recep": ("clean", "sinkbasin"),
    "pick_heat_then_place_in_recep": ("heat", "microwave"),
    "pick_cool_then_place_in_recep": ("cool", "fridge"),
}
_NAME_RE = re.compile(r"^([a-z]+) (\d+)$")
_LISTING_RE = re.compile(r"you see (.*?)\.?\s*$", re.S)
_ITEM_RE = re.compile(r"(?:^|,)\s*(?:and\s+)?an? ([a-z]+ \d+)")


def room_listing(text: str) -> list[str]:
    """The receptacles of a room's first observation, in the order it lists them."""
    if "Looking quickly around you" not in text:
        return []
    match = _LISTING_RE.search(text.split("Looking quickly around you", 1)[1])
    return _ITEM_RE.findall(match.group(1)) if match else []


def kind_of(name: str) -> str:
    """'cabinet 12' -> 'cabinet'."""
    match = _NAME_RE.match(name.strip())
    return match.group(1) if match else name.strip()


class ExploringExpert:
    """A memory-light explorer for one episode; `act` maps (text, admissible) to a command."""

    def __init__(self, task_type: str, params: dict[str, str]) -> None:
        self.task_type = task_type
        self.target = params.get("object_target", "").lower()
        self.parent = params.get("parent_target", "").lower()
        self.lamp = params.get("toggle_target", "").lower()
        if not self.target:
            raise ValueError(f"exploring expert needs pddl_params.object_target, got {params}")
        self.location = ""
        self.holding = ""
        self.placed: set[str] = set()
        self.listing: list[str] = []
        self.phase = "find"
        self.wrong = ""  # an object another policy took that the task does not need

    # -- helpers ----------------------------------------------------------------------------
    def observe(self, text: str) -> None:
        """Read the room's listing from the first observation (later texts leave it alone)."""
        if not self.listing:
            self.listing = room_listing(text)

    def _goto_next(self, admissible: list[str], search_inside: bool = False) -> str:
        """Go to the place listed after the current one (cyclically) that can be gone to; from
        an unlisted place (the start), the first one. Without a listing, sorted targets.

        A listed place that shares the current spot cannot be gone to; when searching inside
        receptacles (`search_inside`) and it is closed, it is opened from here instead."""
        reachable = {c[len("go to "):] for c in admissible if c.startswith("go to ")}
        order = self.listing or sorted(reachable | {self.location} - {""})
        if self.location in order:
            at = order.index(self.location)
            order = order[at + 1:] + order[:at]
        for name in order:
            if name in reachable:
                return f"go to {name}"
            if search_inside and f"open {name}" in admissible:
                return f"open {name}"
        return f"go to {sorted(reachable)[0]}" if reachable else "look"

    def _goto_kind(self, admissible: list[str], kind: str) -> str:
        names = sorted(c[len("go to "):] for c in admissible if c.startswith("go to ") and kind_of(c[6:]) == kind)
        return f"go to {names[0]}" if names else self._goto_next(admissible)

    def _open_here(self, admissible: list[str]) -> str | None:
        command = f"open {self.location}"
        return command if self.location and command in admissible else None

    # -- policy -------------------------------------------------------------------------------
    def act(self, text: str, admissible: list[str]) -> str:
        """The next command; also updates the expert's own state as if the command succeeds."""
        self.observe(text)
        command = self.choose(admissible)
        self.update(command)
        return command

    def update(self, command: str) -> None:
        """Track the effect of an executed command that took effect (the expert's own or another
        policy's: the labeller of DAgger and of the agreement figures follows any policy)."""
        if command.startswith("go to "):
            self.location = command[len("go to "):]
        elif command.startswith("take "):
            obj = command[len("take "):].split(" from ")[0]
            if self.phase == "find" and kind_of(obj) == self.target and obj not in self.placed:
                self.holding = obj
                self.phase = "tool" if self.task_type in _TOOLS else "lamp" if self.lamp and not self.parent else "place"
            elif obj != self.holding:
                self.wrong = obj  # another policy picked up something the plan does not use
        elif command.startswith(("clean ", "heat ", "cool ")) and self.phase == "tool":
            if command.split(" ", 1)[1].startswith(f"{self.holding} with "):
                self.phase = "place"
        elif self.wrong and command.startswith(f"move {self.wrong} to "):
            self.wrong = ""
        elif command.startswith(f"move {self.holding} to ") and self.holding:
            if self.phase == "place" and kind_of(command.split(" to ")[-1]) == self.parent:
                self.placed.add(self.holding)
                self.phase = "find" if len(self.placed) < self._needed() else "done"
            else:  # put down too early or in the wrong place: find it again
                self.phase = "find"
            self.holding = ""

    def _needed(self) -> int:
        return 2 if self.task_type == "pick_two_obj_and_place" else 1

    def choose(self, admissible: list[str]) -> str:
        """The expert's command for these admissible commands (no state change)."""
        if self.wrong:  # hands full with the wrong object: put it down here first
            for command in sorted(admissible):
                if command.startswith(f"move {self.wrong} to "):
                    return command
        if self.phase == "find":
            for command in sorted(admissible):
                if command.startswith(f"take {self.target} "):
                    obj = command[len("take "):].split(" from ")[0]
                    if kind_of(obj) == self.target and obj not in self.placed:
                        return command
            return self._open_here(admissible) or self._goto_next(admissible, search_inside=True)
        if self.phase == "tool":
            verb, kind = _TOOLS[self.task_type]
            for command in sorted(admissible):
                if command.startswith(f"{verb} {self.holding} with ") and kind_of(command.split(" with ")[1]) == kind:
                    return command
            return self._goto_kind(admissible, kind)
        if self.phase == "place":
            for command in sorted(admissible):
                if command.startswith(f"move {self.holding} to ") and kind_of(command.split(" to ")[-1]) == self.parent:
                    return command
            if kind_of(self.location) == self.parent:
                return self._open_here(admissible) or self._goto_kind(admissible, self.parent)
            return self._goto_kind(admissible, self.parent)
        if self.phase == "lamp":
            for command in sorted(admissible):
                if command.startswith(f"use {self.lamp} "):
                    return command
            return self._goto_next(admissible)
        return "look"
