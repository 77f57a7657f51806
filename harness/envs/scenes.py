"""Room templates from what the alfworld wheel ships, and drawing one game in a room.

A template is one of ALFRED's floor plans (`alfworld/gen/layouts/FloorPlan<N>-*.json`: the
receptacle ids with their interaction poses, and the object classes of that scene), cut
down to `receptacles_per_room` receptacles so that observations stay short. The cut is a
fixed function of (floor plan, size): every game on template N sees the same room, and only
the objects, their placements and the goal change. Which objects go where, and which can be
cleaned/heated/cooled/toggled, comes from `alfworld.gen.constants`; the goal sentences come
from `alfworld.gen.goal_library`.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import alfworld.gen.constants as C
import alfworld.gen.goal_library as goal_library

KIND_BY_RANGE = {"Kitchen": range(1, 31), "LivingRoom": range(201, 231),
                 "Bedroom": range(301, 331), "Bathroom": range(401, 431)}
# The appliance a task type needs, and the receptacle class it must not end in.
APPLIANCE = {"pick_clean_then_place_in_recep": "SinkBasin",
             "pick_heat_then_place_in_recep": "Microwave",
             "pick_cool_then_place_in_recep": "Fridge"}
ACTION_SET = {"pick_clean_then_place_in_recep": "Cleanable",
              "pick_heat_then_place_in_recep": "Heatable",
              "pick_cool_then_place_in_recep": "Coolable"}
LAMPS = ("DeskLamp", "FloorLamp")
# Where a lamp stands (hand-picked: constants lets no receptacle "contain" a lamp).
LAMP_HOSTS = ("Desk", "Dresser", "SideTable", "CoffeeTable", "TVStand", "DiningTable", "Shelf")
RECEPTACLE_TYPES = sorted(set(C.RECEPTACLES) - set(C.MOVABLE_RECEPTACLES))
OBJECT_TYPES = sorted(set(C.OBJECTS) - set(RECEPTACLE_TYPES))
# Classes that can be picked up and put somewhere (sliced variants are not used).
PLACEABLE = sorted(o for o in set().union(*C.VAL_RECEPTACLE_OBJECTS.values())
                   if o in OBJECT_TYPES)


@dataclass(frozen=True)
class Receptacle:
    """One receptacle of a room: ALFRED id (`Class|x|y|z`), class, location id."""

    rid: str
    cls: str
    loc: str


@dataclass(frozen=True)
class RoomTemplate:
    """A numbered room: its kind, receptacles, object classes that fit, and its lamp."""

    scene_num: int
    kind: str
    receptacles: tuple[Receptacle, ...]
    object_classes: tuple[str, ...]  # placeable classes of the scene some receptacle can hold
    lamp: tuple[str, str] | None  # (lamp class, host receptacle id) in living rooms/bedrooms
    start_loc: str  # where the agent starts: a location where no receptacle stands

    @property
    def receptacle_classes(self) -> list[str]:
        return sorted({r.cls for r in self.receptacles})


@dataclass(frozen=True)
class Placement:
    """An object instance in the initial state: ALFRED id, class, receptacle id."""

    oid: str
    cls: str
    rid: str


@dataclass(frozen=True)
class GameDraw:
    """Everything that defines one game, drawn from one seeded random stream."""

    task_type: str
    scene_num: int
    object_target: str
    parent_target: str  # "" for look_at_obj_in_light, like ALFRED
    toggle_target: str  # "" unless look_at_obj_in_light
    sentence: str
    placements: tuple[Placement, ...]

    def fingerprint(self) -> tuple:
        """What makes two games the same game (used to keep splits free of duplicates)."""
        return (self.task_type, self.scene_num, self.object_target, self.parent_target,
                self.toggle_target, tuple(sorted((p.cls, p.rid) for p in self.placements)))


def layouts_dir() -> Path:
    """The floor-plan files shipped inside the alfworld wheel."""
    return Path(C.__file__).parent / "layouts"


def room_kind(scene_num: int) -> str:
    """ALFRED's scene numbering: 1-30 kitchens, 201-230 living rooms, 301-330 bedrooms, 401-430 bathrooms."""
    for kind, numbers in KIND_BY_RANGE.items():
        if scene_num in numbers:
            return kind
    raise ValueError(f"Scene number {scene_num} is not an ALFRED floor plan (1-30, 201-230, 301-330, 401-430).")


def _receptacle_class(rid: str) -> str | None:
    parts = rid.split("|")
    cls = parts[-1] if len(parts) == 5 else parts[0]  # `Sink|x|y|z|SinkBasin`
    if len(parts) == 5 and parts[-1] != parts[0] + "Basin":
        return None  # a few ALFRED ids call a bathtub a SinkBasin: the name would lie
    return cls if cls in RECEPTACLE_TYPES else None


def _location(pose: list) -> str:
    x, z, rotation, horizon = pose
    return f"loc|{round(x / 0.25)}|{round(z / 0.25)}|{round(rotation / 90) % 4}|{round(horizon)}"


def _choose_receptacles(all_recs: list[Receptacle], required: list[str], size: int,
                        rng: random.Random) -> list[Receptacle]:
    chosen: list[Receptacle] = []
    for cls in required:  # one instance of each class a task type needs
        options = [r for r in all_recs if r.cls == cls and r not in chosen]
        if options:
            chosen.append(rng.choice(options))
    rest = [r for r in all_recs if r not in chosen]
    rng.shuffle(rest)
    # Prefer one receptacle of each class before a second cabinet: varied rooms, short text.
    seen = {r.cls for r in chosen}
    firsts = [r for r in rest if not (r.cls in seen or seen.add(r.cls))]
    others = [r for r in rest if r not in firsts]
    chosen += (firsts + others)[: max(0, size - len(chosen))]
    return sorted(chosen, key=lambda r: r.rid)


@cache
def load_template(scene_num: int, receptacles_per_room: int) -> RoomTemplate | None:
    """Template `scene_num` cut to `receptacles_per_room` receptacles; None if unusable."""
    kind = room_kind(scene_num)
    poses = json.loads((layouts_dir() / f"FloorPlan{scene_num}-openable.json").read_text())
    scene_objects = set(json.loads((layouts_dir() / f"FloorPlan{scene_num}-objects.json").read_text()))
    all_recs = [Receptacle(rid, cls, _location(pose)) for rid, pose in sorted(poses.items())
                if (cls := _receptacle_class(rid))]
    rng = random.Random(f"template|{scene_num}|{receptacles_per_room}")
    lamp_cls = next((lamp for lamp in LAMPS if lamp in scene_objects), None)
    if kind not in ("LivingRoom", "Bedroom"):
        lamp_cls = None
    required = {"Kitchen": ["Fridge", "Microwave", "SinkBasin"], "Bathroom": ["SinkBasin"]}.get(kind, [])
    hosts = sorted({r.cls for r in all_recs} & set(LAMP_HOSTS))
    if lamp_cls and hosts:
        required = [rng.choice(hosts)]
    recs = _choose_receptacles(all_recs, required, receptacles_per_room, rng)
    if len(recs) < 2:
        return None
    lamp = None
    if lamp_cls and (host_options := [r for r in recs if r.cls in LAMP_HOSTS]):
        lamp = (lamp_cls, rng.choice(host_options).rid)
    holdable = set().union(*(C.VAL_RECEPTACLE_OBJECTS[c] for c in {r.cls for r in recs}))
    classes = tuple(sorted(c for c in PLACEABLE if c in scene_objects and c in holdable))
    used_locs = {r.loc for r in all_recs}
    xs = [int(r.loc.split("|")[1]) for r in all_recs]
    zs = [int(r.loc.split("|")[2]) for r in all_recs]
    cx, cz = round(sum(xs) / len(xs)), round(sum(zs) / len(zs))
    start = f"loc|{cx}|{cz}|0|30"
    while start in used_locs:
        cx += 1
        start = f"loc|{cx}|{cz}|0|30"
    return RoomTemplate(scene_num, kind, tuple(recs), classes, lamp, start)


def _holders(template: RoomTemplate, cls: str) -> list[Receptacle]:
    return [r for r in template.receptacles if cls in C.VAL_RECEPTACLE_OBJECTS[r.cls]]


@cache
def goal_candidates(template: RoomTemplate, task_type: str) -> tuple[tuple[str, str], ...]:
    """(object class, parent class or lamp class) pairs the task type can use in this room."""
    if task_type not in C.GOALS_VALID or template.kind not in C.GOALS_VALID[task_type]:
        return ()
    if task_type == "look_at_obj_in_light":
        if template.lamp is None:
            return ()
        return tuple((o, template.lamp[0]) for o in template.object_classes)
    classes = set(template.receptacle_classes)
    appliance = APPLIANCE.get(task_type)
    if appliance and appliance not in classes:
        return ()
    objects = template.object_classes
    if task_type in ACTION_SET:
        objects = tuple(o for o in objects if o in C.VAL_ACTION_OBJECTS[ACTION_SET[task_type]])
    pairs = []
    for obj in objects:
        holder_classes = {r.cls for r in _holders(template, obj)}
        for parent in sorted(holder_classes - {appliance}):
            if holder_classes - {parent}:  # the object can start somewhere else
                pairs.append((obj, parent))
    return tuple(pairs)


def _coord(value: float) -> str:
    value = round(value, 2)
    return "00.00" if value == 0 else f"{value:+06.2f}"  # ALFRED prints zero unsigned


def _object_id(cls: str, rec: Receptacle, taken: set[str], rng: random.Random) -> str:
    x, y, z = (float(v) for v in rec.rid.split("|")[1:4])
    while True:
        oid = "|".join([cls, _coord(x + rng.uniform(-0.4, 0.4)),
                        _coord(y + rng.uniform(0.0, 0.3)), _coord(z + rng.uniform(-0.4, 0.4))])
        if oid not in taken:
            taken.add(oid)
            return oid


def draw_game(template: RoomTemplate, task_type: str, distractors: int,
              rng: random.Random) -> GameDraw:
    """One game of `task_type` in `template`: goal, target instances, distractors."""
    pairs = goal_candidates(template, task_type)
    if not pairs:
        raise ValueError(f"Template {template.scene_num} cannot host {task_type}.")
    obj, second = rng.choice(pairs)
    look = task_type == "look_at_obj_in_light"
    parent, toggle = ("", second) if look else (second, "")
    taken: set[str] = set()
    placements = []
    if template.lamp:  # the room's lamp stands where it always stands
        host = next(r for r in template.receptacles if r.rid == template.lamp[1])
        placements.append(Placement(_object_id(template.lamp[0], host, taken, rng), template.lamp[0], host.rid))
    # Targets never start in a receptacle of the goal class, so the goal is not met at start.
    starts = [r for r in _holders(template, obj) if r.cls != parent]
    low, high = (2, 3) if task_type == "pick_two_obj_and_place" else (1, 2)
    for _ in range(rng.randint(low, high)):
        rec = rng.choice(starts)
        placements.append(Placement(_object_id(obj, rec, taken, rng), obj, rec.rid))
    others = [c for c in template.object_classes if c != obj]
    for _ in range(distractors if others else 0):
        cls = rng.choice(others)
        rec = rng.choice(_holders(template, cls))
        placements.append(Placement(_object_id(cls, rec, taken, rng), cls, rec.rid))
    words = {"obj": obj.lower(), "recep": parent.lower(), "toggle": toggle.lower(), "mrecep": ""}
    sentence = rng.choice(goal_library.gdict[task_type]["templates"]).format(**words)
    return GameDraw(task_type, template.scene_num, obj, parent, toggle, sentence,
                    tuple(sorted(placements, key=lambda p: p.oid)))
