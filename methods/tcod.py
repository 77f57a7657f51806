"""TCOD (arXiv 2604.24005, code kokolerk/TCOD): a temporal curriculum over trajectory depth.

From the paper (its abstract and introduction were readable here) and its code
(trinity/.../TCOD/alfworld/TCOD_{f2b,b2f}_workflow.py): vanilla OPD on multi-turn rollouts
suffers "trajectory-level KL instability" (errors compound, the student leaves the teacher's
support), so the trajectory depth trained on grows over training, short to long, front-to-back
(f2b: the first turns first) or back-to-front (b2f: the last turns first). The code's depth is
1 + step // checkpoint_steps turns (ALFWorld: 6 of 250 steps, 30-turn cap: all from step 174,
~0.7 of training); its loss is the sampled-token OPD estimate (here: method.estimator=sampled).

Our reading (the harness plays whole episodes): a 0/1 gate per turn from the turn's index t in
its trajectory, the trajectory's length L and progress p: f2b keeps t < D(p), b2f t >= L - D(p).
The code's f2b stops each episode after D turns: the same loss on those turns, cheaper rollouts.
Its b2f replays the expert's first L_expert - D actions and trains every student turn after
them; here the student plays every turn and its own last D are trained. D grows from
`tcod_start` to the whole trajectory at `tcod_full_at`, in turns (`tcod_unit=turns`, capped by
`tcod_max_depth`, as the code) or as a fraction of each trajectory (`tcod_unit=fraction`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from methods.batch import MethodBatch
from methods.schedule import ramp, require_progress

ORDERS: tuple[str, ...] = ("front_to_back", "back_to_front")
UNITS: tuple[str, ...] = ("turns", "fraction")
_EPS = 1e-9  # float slack so that an exact integer depth is not floored one turn short


def depth(progress: float, *, unit: str, start: float, max_depth: int, full_at: float, shape: str,
          num_turns: float = 1.0) -> float:
    """Turns covered at `progress`: turns unit floor(start + (max - start) r), fraction ceil(phi L)."""
    r = ramp(progress, 0.0, full_at, shape)
    if unit == "turns":
        return float(math.floor(start + (max_depth - start) * r + _EPS))
    return float(math.ceil((start + (1.0 - start) * r) * num_turns - _EPS))


def depth_gate_U(batch: MethodBatch, *, order: str, unit: str, start: float, max_depth: int,
                 full_at: float, shape: str) -> Tensor:
    """Per turn 1.0 inside the curriculum's depth, 0.0 outside (f2b: t < D; b2f: t >= L - D)."""
    if batch.turn_index_U is None or batch.num_turns_U is None:
        raise ValueError("the tcod curriculum needs turn_index_U and num_turns_U in every MethodBatch "
                         "(the trainer fills them from the trajectories)")
    index_U, length_U = batch.turn_index_U.long(), batch.num_turns_U.float()
    if index_U.shape != (batch.num_turns,) or length_U.shape != index_U.shape:
        raise ValueError(f"turn_index_U {tuple(index_U.shape)} and num_turns_U {tuple(length_U.shape)} "
                         f"need one entry per turn of the micro-batch ({batch.num_turns})")
    p = require_progress(batch.progress, "the tcod curriculum")
    if unit == "turns":
        d = depth(p, unit=unit, start=start, max_depth=max_depth, full_at=full_at, shape=shape)
        depth_U = torch.full_like(length_U, d)
    else:
        depth_U = torch.tensor([depth(p, unit=unit, start=start, max_depth=max_depth, full_at=full_at,
                                      shape=shape, num_turns=n) for n in length_U.tolist()],
                               dtype=length_U.dtype, device=length_U.device)
    if order == "front_to_back":
        keep_U = index_U < depth_U
    else:
        keep_U = index_U >= length_U - depth_U
    return keep_U.float()
