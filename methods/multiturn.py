"""The 2026 multi-turn OPD methods built on switches of Method: tcod (depth curriculum), atod.

The maths and what is from each paper versus our reading: methods/tcod.py and methods/atod.py.
Each is also a switch on any method: `method=sage method.curriculum=tcod` puts SAGE's gate inside
TCOD's curriculum; `method.atod_rl_max=0.3` adds atod's RL term (and drops verifier_free).
"""

from __future__ import annotations

from methods.method import Method
from methods.registry import register, with_knobs

# Scale-preserving with 0/1 turn weights = the mean token loss over the covered turns only, as OPD
# on the code's truncated episodes (a mean over all tokens would shrink the loss with the depth).
TCOD = dict(name="tcod", trajectory_source="student", estimator="full_kl", gate="none",
            confidence="none", normalize="scale_preserving", curriculum="tcod")  # fmt: skip


@register("tcod")
def tcod(**overrides) -> Method:
    """TCOD: OPD on the turns inside a depth that grows over training (paper); the depth as a
    per-turn gate on whole-episode rollouts is our reading (methods/tcod.py)."""
    return Method(**with_knobs(TCOD, overrides, fixed=dict(curriculum="tcod")))


# Our defaults: T-DUR on OPD's token loss, scale-preserving (the weights move emphasis between
# turns, not the loss scale), and an RL weight rising linearly to 0.5 over the whole run.
ATOD = dict(name="atod", trajectory_source="student", estimator="full_kl", gate="none",
            confidence="none", normalize="scale_preserving", turn_weight="tdur", atod_rl_max=0.5)  # fmt: skip


@register("atod")
def atod(**overrides) -> Method:
    """ATOD: OPD annealed toward RL on the env's reward, T-DUR turn weights (paper, abstract only);
    every formula is our reading (methods/atod.py). NOT verifier-free."""
    method = Method(**with_knobs(ATOD, overrides, fixed=dict(turn_weight="tdur")))
    if method.atod_rl_max <= 0:
        raise ValueError("method 'atod' needs atod_rl_max > 0 (its RL term); for T-DUR alone use "
                         "method=opd method.turn_weight=tdur")
    return method
