"""A pool of worker processes stepping many real ALFWorld envs in lock-step.

Why processes: the engine is not thread-safe (Fast Downward's translator overwrites
`sys.argv` and swaps `sys.stdout` on every load/reset), and two processes give ~1.9x the
episodes/s of one on 2 cores. Env slot i lives in worker i % num_workers; one `step` sends
every worker its share at once and then gathers, so workers run in parallel. Finished envs
are not sent anything. A worker that dies is replaced; its in-flight episodes are reported
as failed with the reason and the rest of the batch goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass, field

from harness.envs.base import get_environment
from harness.envs.worker import PRELOAD_NICE, worker_main


@dataclass
class EnvState:
    """What one env shows after reset/step. `text` is the observation or the feedback."""

    text: str
    task: str
    admissible: list[str]
    won: bool
    done: bool
    steps: int
    gamefile: str
    plan: list[str] = field(default_factory=list)  # planner's commands (with_plan=True only)
    failed: str | None = None  # why the episode failed outside the game (worker death, load error)


def default_num_workers() -> int:
    """One env worker per core this process may use: the Slurm allocation
    (SLURM_CPUS_PER_TASK) inside a Slurm job, else the CPU affinity mask."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class EnvPool:
    """Batched reset/step over envs held by `num_workers` processes (None: one per usable core).
    `fast_engine` applies the exact engine speed-ups (engine_cache.py) in the workers, keeping the
    engine's translations of each game in `engine_cache_dir` when it is given. A preload runs at
    niceness `preload_nice` (worker.py)."""

    def __init__(self, num_workers: int | None = None, max_steps: int = 30, with_plan: bool = False,
                 timeout_s: float = 300.0, cache_size: int = 64, fast_engine: bool = True,
                 environment: str = "alfworld", engine_cache_dir: str | os.PathLike | None = None,
                 preload_nice: int = PRELOAD_NICE) -> None:
        if num_workers is None:
            num_workers = default_num_workers()
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.num_workers, self.max_steps = num_workers, max_steps
        self.with_plan, self.timeout_s, self.cache_size = with_plan, timeout_s, cache_size
        self.fast_engine = fast_engine
        self.engine_cache_dir = str(engine_cache_dir) if engine_cache_dir is not None else None
        self.preload_nice = preload_nice
        self.environment = get_environment(environment)  # an unknown name fails here, not in a worker
        self._environment_name = environment
        self._ctx = mp.get_context("spawn")  # fork after torch threads start is unsafe
        self._workers: list = [None] * num_workers
        self._conns: list = [None] * num_workers
        self.states: list[EnvState] = []
        self.restarts = 0
        self._pending = [0] * num_workers  # preload requests sent and not yet answered
        self.preloaded_resets = 0  # resets answered from a preload
        for w in range(num_workers):
            self._start_worker(w)

    # -- worker lifecycle -------------------------------------------------------------
    def _start_worker(self, w: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=worker_main, args=(child, self.with_plan, self.cache_size, self.fast_engine, self._environment_name,
                  self.engine_cache_dir, self.preload_nice),
            daemon=True, name=f"alfworld-env-{w}",
        )
        proc.start()
        child.close()
        self._workers[w], self._conns[w] = proc, parent

    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers]

    def _receive(self, w: int) -> list | str:
        """The next reply of worker w; a dead or silent worker is restarted and yields an error string."""
        conn, proc = self._conns[w], self._workers[w]
        try:
            if not conn.poll(self.timeout_s):
                raise TimeoutError(f"no answer in {self.timeout_s:.0f} s")
            return conn.recv()
        except (EOFError, OSError, TimeoutError) as err:
            proc.join(timeout=1)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            self.restarts += 1
            self._pending[w] = 0
            self._start_worker(w)
            return (f"env worker {w} (pid {proc.pid}) died (exit code {proc.exitcode}; "
                    f"{type(err).__name__}: {err}); episode counted as failed")

    def _call_all(self, requests: dict[int, tuple]) -> dict[int, list | str]:
        """Send each worker its request, then gather; a dead worker yields an error string."""
        for w in requests:
            while self._pending[w]:  # a preload still running there: its answer comes first
                self._pending[w] -= 1
                self._receive(w)
        for w, request in requests.items():
            try:
                self._conns[w].send(request)
            except (BrokenPipeError, OSError):
                pass  # noticed on receive
        return {w: self._receive(w) for w in requests}

    # -- batched API --------------------------------------------------------------------
    def reset(self, gamefiles: list[str]) -> list[EnvState]:
        """Start one episode per game file (slot i plays gamefiles[i])."""
        if not gamefiles:
            raise ValueError("reset needs at least one game file")
        requests: dict[int, tuple] = {}
        for i, gamefile in enumerate(gamefiles):
            requests.setdefault(i % self.num_workers, ("reset", []))[1].append((i, str(gamefile)))
        replies = self._call_all(requests)
        self.states = [EnvState("", "", [], False, True, 0, str(g)) for g in gamefiles]
        for w, (_, items) in requests.items():
            for k, (i, gamefile) in enumerate(items):
                reply = replies[w]
                if isinstance(reply, str):
                    self.states[i].failed = reply
                    continue
                result = reply[k]
                if "error" in result:
                    self.states[i].failed = result["error"]
                    continue
                self.preloaded_resets += bool(result.get("preloaded"))
                observation, task = self.environment.split_initial(result["text"])
                self.states[i] = EnvState(observation, task, result["admissible"], result["won"],
                                          result["done"], 0, gamefile, result.get("plan", []))
        return list(self.states)

    def preload(self, gamefiles: list[str]) -> None:
        """Load and reset these games in the workers now, without waiting: call it before other
        work (scoring, the update) and a later `reset(gamefiles)` in the same order returns at once.
        Game i goes to the worker that `reset` will give slot i. Errors surface at that reset."""
        requests: dict[int, tuple] = {}
        for i, gamefile in enumerate(gamefiles):
            requests.setdefault(i % self.num_workers, ("preload", []))[1].append((None, str(gamefile)))
        for w, request in requests.items():
            try:
                self._conns[w].send(request)
                self._pending[w] += 1
            except (BrokenPipeError, OSError):
                pass  # noticed at the next call

    def step(self, actions: list[str | None]) -> list[EnvState]:
        """Apply actions[i] to slot i; finished slots are skipped (their action is ignored)."""
        if len(actions) != len(self.states):
            raise ValueError(f"step got {len(actions)} actions for {len(self.states)} envs")
        requests: dict[int, tuple] = {}
        for i, (state, action) in enumerate(zip(self.states, actions, strict=True)):
            if state.done or state.failed:
                continue
            if action is None:
                raise ValueError(f"env {i} is still running but got no action")
            requests.setdefault(i % self.num_workers, ("step", []))[1].append((i, str(action)))
        replies = self._call_all(requests) if requests else {}
        for w, (_, items) in requests.items():
            for k, (i, _action) in enumerate(items):
                state, reply = self.states[i], replies[w]
                if isinstance(reply, str) or "error" in reply[k]:
                    state.failed = reply if isinstance(reply, str) else reply[k]["error"]
                    state.done = True
                    continue
                result = reply[k]
                state.steps += 1
                state.text, state.admissible, state.won = result["text"], result["admissible"], result["won"]
                state.plan = result.get("plan", [])
                state.done = result["done"] or state.won or state.steps >= self.max_steps
        return list(self.states)

    def worker_info(self) -> list[dict]:
        """Each worker's state: whether it runs the fast engine, how many envs it holds."""
        replies = self._call_all({w: ("info", []) for w in range(self.num_workers)})
        return [replies[w] for w in range(self.num_workers)]

    @property
    def all_done(self) -> bool:
        return all(s.done or s.failed for s in self.states)

    def close(self) -> None:
        for w, conn in enumerate(self._conns):
            try:
                conn.send(("close", []))
            except (BrokenPipeError, OSError):
                pass
            self._workers[w].join(timeout=5)
            if self._workers[w].is_alive():
                self._workers[w].kill()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
