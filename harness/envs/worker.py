"""The env worker process: holds real ALFWorld envs and answers batched reset/step requests.

Runs in its own process (see pool.py for why). Envs are cached per game file (LRU) since
loading a game costs ~260 ms and resetting one ~185 ms.
"""

from __future__ import annotations

import sys
import traceback
from collections import OrderedDict


def _make_env(gamefile: str, with_plan: bool):
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"],
                               policy_commands=with_plan)
    return textworld.start(gamefile, infos, wrappers=[AlfredDemangler(), AlfredInfos])


def _state_dict(state, done: bool, with_plan: bool) -> dict:
    result = {
        "text": state.feedback if state.feedback is not None else "",
        "admissible": [str(c) for c in (state.get("admissible_commands") or [])],
        "won": bool(state.get("won")),
        "done": bool(done),
    }
    if with_plan:
        result["plan"] = [str(c) for c in (state.get("policy_commands") or [])]
    return result


def worker_main(conn, with_plan: bool, cache_size: int) -> None:
    """Serve ("reset", [(slot, gamefile)]), ("step", [(slot, action)]), ("close", []) and
    ("preload", [(None, gamefile)]): load and reset envs ahead of time (while the caller is busy
    elsewhere), so a later "reset" of that game answers with the stored first state at once."""
    idle: OrderedDict[tuple[str, int], object] = OrderedDict()  # (gamefile, copy) -> env, LRU
    active: dict[int, tuple[tuple[str, int], object]] = {}  # slot -> (key, env)
    fresh: dict[tuple[str, int], dict] = {}  # idle envs reset ahead of time -> their first state
    real_argv, real_stdout = list(sys.argv), sys.stdout
    while True:
        try:
            command, items = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if command == "close":
            return
        if command == "reset":
            # A slot gets its own engine: two slots playing the same game file never share one.
            for slot, _ in items:
                if slot in active:
                    key, env = active.pop(slot)
                    idle[key] = env
        results = []
        for slot, arg in items:
            try:
                if command in ("reset", "preload"):
                    # reset: a preloaded copy of the game first, else any idle one; preload: one
                    # more preloaded copy per item (a batch may play the same game in two slots)
                    key = next((k for k in idle if k[0] == arg and k in fresh), None) if command == "reset" else None
                    if key is None:
                        key = next((k for k in idle if k[0] == arg and k not in fresh), None)
                    if key is None:
                        copies = {k[1] for k in idle if k[0] == arg} | {k[1] for k, _ in active.values() if k[0] == arg}
                        key, env = (arg, max(copies, default=-1) + 1), _make_env(arg, with_plan)
                    else:
                        env = idle.pop(key)
                    first = fresh.pop(key, None)
                    if first is None:  # a reset is deterministic: a stored first state is the same
                        first = _state_dict(env.reset(), False, with_plan)
                    else:
                        first = {**first, "preloaded": True}
                    if command == "preload":
                        idle[key], fresh[key] = env, first
                        first = {}
                    else:
                        active[slot] = (key, env)
                    while len(idle) > cache_size:
                        old_key, old = idle.popitem(last=False)
                        fresh.pop(old_key, None)
                        old.close()
                    results.append(first)
                else:
                    state, _reward, done = active[slot][1].step(arg)
                    results.append(_state_dict(state, done, with_plan))
            except Exception as err:  # reported per env; the worker goes on
                detail = traceback.format_exception_only(type(err), err)[-1].strip()
                results.append({"error": f"{command} failed for {arg!r}: {detail}"})
            finally:
                # Fast Downward's translator clobbers these on load/reset.
                sys.argv, sys.stdout = list(real_argv), real_stdout
        try:
            conn.send(results)
        except (BrokenPipeError, EOFError, OSError):
            return  # the pool's process is gone: nothing left to serve
