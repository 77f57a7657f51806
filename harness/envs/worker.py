"""The env worker process: holds real games of one environment (base.py) and answers batched
reset/step requests.

Runs in its own process (see pool.py for why). Envs are cached per game file (LRU) since
loading a game costs 155 ms with the fast engine (26 ms from its kept files, 224 ms without it;
`python -m harness.bench.engine`), more than a reset. A preload runs in a thread of its own at
the lowest CPU priority (PRELOAD_NICE): it fills the time the caller's other work leaves idle
instead of competing with it (on 2 cores, a preload beside torch made the scoring 3x slower), and it
ends before the worker serves anything else (the pool waits for its answer first).
"""

from __future__ import annotations

import os
import sys
import threading
import traceback
from collections import OrderedDict

from harness.envs.alfworld import make_textworld_env as _make_env  # noqa: F401  (harness/bench/engine.py)
from harness.envs.base import get_environment

PRELOAD_NICE = 19  # the preload thread's niceness (Linux: per thread); the worker's own stays as it is


def _lower_this_threads_priority(nice: int) -> int | None:
    """Set this thread's niceness; returns the niceness it then runs at (None: unknown)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (AttributeError, OSError):  # not Linux, or not allowed: the preload runs at normal priority
        return None


def worker_main(conn, with_plan: bool, cache_size: int, fast_engine: bool = True,
                environment: str = "alfworld", engine_cache_dir: str | None = None,
                preload_nice: int = PRELOAD_NICE) -> None:
    """Serve the games of `environment` (registered in base.py; `fast_engine`: its exact engine
    speed-ups, engine_cache.py for ALFWorld, in this process, with what they keep on disk in
    `engine_cache_dir`): serve ("reset", [(slot, gamefile)]), ("step", [(slot, action)]), ("close", []) and
    ("preload", [(None, gamefile)]): load and reset envs ahead of time (while the caller is busy
    elsewhere), so a later "reset" of that game answers with the stored first state at once."""
    idle: OrderedDict[tuple[str, int], object] = OrderedDict()  # (gamefile, copy) -> env, LRU
    active: dict[int, tuple[tuple[str, int], object]] = {}  # slot -> (key, env)
    fresh: dict[tuple[str, int], dict] = {}  # idle envs reset ahead of time -> their first state
    real_argv, real_stdout = list(sys.argv), sys.stdout
    env_kind = get_environment(environment)
    env_kind.setup_worker(fast_engine, engine_cache_dir)
    preloading: threading.Thread | None = None
    ran_at: list[int | None] = []  # the niceness the last preload ran at (worker_info)

    def serve(command: str, items: list) -> bool:
        """Answer one request (reset, preload, step); False when the caller is gone."""
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
                        key, env = (arg, max(copies, default=-1) + 1), env_kind.make_game(arg, with_plan)
                    else:
                        env = idle.pop(key)
                    first = fresh.pop(key, None)
                    if first is None:  # a reset is deterministic: a stored first state is the same
                        first = env.reset()
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
                    results.append(active[slot][1].step(arg))
            except Exception as err:  # reported per env; the worker goes on
                detail = traceback.format_exception_only(type(err), err)[-1].strip()
                results.append({"error": f"{command} failed for {arg!r}: {detail}"})
            finally:
                # Fast Downward's translator clobbers these on load/reset.
                sys.argv, sys.stdout = list(real_argv), real_stdout
        try:
            conn.send(results)
        except (BrokenPipeError, EOFError, OSError):
            return False  # the pool's process is gone: nothing left to serve
        return True

    def preload(items: list) -> None:
        ran_at[:] = [_lower_this_threads_priority(preload_nice)]
        serve("preload", items)

    while True:
        try:
            command, items = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if preloading is not None:  # never two at work on the engine: the preload ends first
            preloading.join()
            preloading = None
        if command == "close":
            return
        if command == "info":
            from harness.envs import engine_cache

            conn.send({"fast_engine": engine_cache.installed(), "cached_envs": len(idle) + len(active),
                       "engine_cache_dir": engine_cache.disk_dir(), "preload_nice": ran_at[0] if ran_at else None,
                       "nice": os.getpriority(os.PRIO_PROCESS, threading.get_native_id())})
            continue
        if command == "preload":
            preloading = threading.Thread(target=preload, args=(items,), name="preload", daemon=True)
            preloading.start()
            continue
        if not serve(command, items):
            return
