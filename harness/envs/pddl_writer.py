"""Writing one drawn game in ALFWorld's on-disk format (the PDDL problem and the JSON files).

Conventions of the real dataset that the engine relies on: ALFRED ids escaped
(`Apple|+01.00|...` -> `Apple_bar__plus_01_dot_00...`, which alfworld's demangler turns into
`apple 1`), `agent1`, every object class, otype and rtype of `constants` declared (the domain
names `SinkBasinType`, `KnifeType`, ... in its actions), the goal from `goal_library`.
All iteration is sorted, so the same draw gives the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import alfworld.gen.constants as C
import alfworld.gen.goal_library as goal_library
import alfworld.info

from harness.envs.scenes import OBJECT_TYPES, RECEPTACLE_TYPES, GameDraw, RoomTemplate

_ESCAPES = (("-", "_minus_"), ("#", "-"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"),
            (",", "_comma_"))
_ACTION_FACTS = (("cleanable", "Cleanable"), ("heatable", "Heatable"), ("coolable", "Coolable"),
                 ("toggleable", "Toggleable"), ("sliceable", "Sliceable"))


def escape(alfred_id: str) -> str:
    """ALFRED id -> PDDL name, exactly as the real dataset escapes it."""
    for old, new in _ESCAPES:
        alfred_id = alfred_id.replace(old, new)
    return alfred_id


def domain_text() -> str:
    """The PDDL domain shipped with alfworld."""
    return Path(alfworld.info.ALFRED_PDDL_PATH).read_text()


def grammar_text(sentence: str) -> str:
    """The shipped TextWorld grammar with the task sentence in place of `UNKNOWN GOAL`."""
    return Path(alfworld.info.ALFRED_TWL2_PATH).read_text().replace("UNKNOWN GOAL", sentence)


def goal_pddl(draw: GameDraw) -> str:
    """goal_library's goal for the draw (its text closes the `define` too)."""
    text = goal_library.gdict[draw.task_type]["pddl"].format(
        obj=draw.object_target, recep=draw.parent_target, toggle=draw.toggle_target, mrecep="")
    return text.replace("#", "-")


def problem_text(draw: GameDraw, template: RoomTemplate, name: str) -> str:
    """The PDDL problem of one game."""
    recs = {r.rid: r for r in template.receptacles}
    objects = [(escape(p.oid), p) for p in draw.placements]
    locations = sorted({escape(r.loc) for r in template.receptacles} | {escape(template.start_loc)})
    lines = [f"(define (problem {name})", "(:domain alfred)", "(:objects", "agent1 - agent"]
    lines += [f"{c} - object" for c in OBJECT_TYPES]
    lines += [f"{c}Type - otype" for c in OBJECT_TYPES]
    lines += [f"{c}Type - rtype" for c in RECEPTACLE_TYPES]
    lines += [f"{o} - object" for o, _ in objects]
    lines += [f"{escape(r.rid)} - receptacle" for r in template.receptacles]
    lines += [f"{loc} - location" for loc in locations]
    lines += [")", "(:init"]
    lines += [f"(receptacleType {escape(r.rid)} {r.cls}Type)" for r in template.receptacles]
    lines += [f"(objectType {o} {p.cls}Type)" for o, p in objects]
    for rcls in template.receptacle_classes:
        held = sorted(c for c in C.VAL_RECEPTACLE_OBJECTS[rcls] if c in OBJECT_TYPES)
        lines += [f"(canContain {rcls}Type {c}Type)" for c in held]
    lamps = {draw.toggle_target} | ({template.lamp[0]} if template.lamp else set())
    lines += [f"(pickupable {o})" for o, p in objects if p.cls not in lamps]
    lines += [f"(isReceptacleObject {o})" for o, p in objects if p.cls in C.MOVABLE_RECEPTACLES_SET]
    lines += [f"(openable {escape(r.rid)})" for r in template.receptacles
              if r.cls in C.OPENABLE_CLASS_SET]
    lines.append(f"(atLocation agent1 {escape(template.start_loc)})")
    for predicate, group in _ACTION_FACTS:
        lines += [f"({predicate} {o})" for o, p in objects if p.cls in C.VAL_ACTION_OBJECTS[group]]
    lines += [f"(inReceptacle {o} {escape(p.rid)})" for o, p in objects]
    lines += [f"(receptacleAtLocation {escape(r.rid)} {escape(r.loc)})" for r in template.receptacles]
    lines += [f"(objectAtLocation {o} {escape(recs[p.rid].loc)})" for o, p in objects]
    lines.append(")")
    return "\n".join(lines) + "\n" + goal_pddl(draw).strip() + "\n"


def game_json(draw: GameDraw, problem: str, walkthrough: list[str] | None) -> str:
    """game.tw-pddl: domain, grammar with the goal, problem; stamped only once verified."""
    data = {"pddl_domain": domain_text(), "grammar": grammar_text(draw.sentence),
            "pddl_problem": problem, "solvable": walkthrough is not None}
    if walkthrough is not None:
        data["walkthrough"] = list(walkthrough)
    return dumps(data)


def traj_json(draw: GameDraw, trial: str, seed: int, extra: dict) -> str:
    """traj_data.json with the fields alfworld's loaders and handcoded expert read."""
    data = {
        "task_id": trial,
        "task_type": draw.task_type,
        "pddl_params": {"object_target": draw.object_target, "parent_target": draw.parent_target,
                        "toggle_target": draw.toggle_target, "mrecep_target": "",
                        "object_sliced": False},
        "scene": {"floor_plan": f"FloorPlan{draw.scene_num}", "scene_num": draw.scene_num,
                  "random_seed": seed},
        "turk_annotations": {"anns": [{"task_desc": draw.sentence, "high_descs": [], "votes": []}]},
        "repeat_idx": 0,
        "generator": extra,
    }
    return dumps(data)


def task_dir_name(draw: GameDraw) -> str:
    """`<task>-<Obj>-None-<Recep>-<scene>` (for look tasks the lamp takes the Recep slot)."""
    recep = draw.parent_target or draw.toggle_target
    return f"{draw.task_type}-{draw.object_target}-None-{recep}-{draw.scene_num}"


def dumps(data: dict) -> str:
    """JSON with sorted keys and fixed separators: the same data gives the same bytes."""
    return json.dumps(data, sort_keys=True, separators=(", ", ": "), ensure_ascii=True)
