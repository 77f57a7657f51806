"""Exact speed-ups of the textworld engine, applied inside an env worker process only.

Where a step's time goes (cProfile on the default suite): about 98% is textworld's text
generation (`textworld/envs/pddl/textgen`), and most of that re-parses strings with tatsu:
  - `ContextSensitiveGrammar.derive` parses its template string on every call;
  - `ContextSensitiveGrammar.replace` and `query` parse each rule's condition through
    `Rule.parse_conjunctive_query` on every call;
  - `Symbol.copy` deep-copies the symbol together with its old context (the game state, the
    facts, the entity table) and then throws that copy away for the new context.
The parses are pure functions of their strings, so they are memoized; callers mutate what a
parse returns (they assign each symbol's context), so every call gets its own deep copy of the
cached parse, exactly what a fresh parse would have built. `Symbol.copy` deep-copies the symbol
without its own top-level context (which it replaces at once), so the result is the same.
Loading and resetting a game translate its PDDL problem with Fast Downward (`pddl2sas`,
twice per load and twice per reset), also a pure function of the domain and problem strings:
memoized per game (LRU), it makes every reset after the first one of a game cheap. With a disk
folder (`install(disk_dir=...)`, env.engine_disk_cache), each translation is also kept there,
and so is the parse of each game's grammar (`GameLogic`, tatsu again): compressed pickles named
by a hash of the package's version and the strings, written atomically. The first load of a
game in any later process (every evaluation replays the same games, every method of a seed the
same training games) then skips both translations and the parse. Fast Downward's translator is
deterministic (the same SAS text under any PYTHONHASHSEED).
Nothing the engine returns changes by a byte: tests/test_engine_cache.py replays transcripts
with and without these patches, and `python -m harness.bench.engine` measures the gain.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import tempfile
import zlib
from copy import deepcopy
from pathlib import Path

_INSTALLED = False
_DISK: Path | None = None  # where translations and grammar parses are kept across processes (None: memory only)


def install(disk_dir: str | os.PathLike | None = None) -> bool:
    """Patch textworld's text generation in this process (idempotent; `disk_dir` replaces the
    folder of kept translations, None keeps them in memory only). Returns True if it patched
    now, False if it was already patched."""
    global _INSTALLED, _DISK
    _DISK = Path(disk_dir) if disk_dir is not None else None
    if _INSTALLED:
        return False
    import textworld.envs.pddl.textgen as textgen
    from textworld.logic import Rule

    original_parse = textgen._parse_and_convert

    @functools.cache
    def _cached_parse(text: str, rule_name: str, trace: bool):
        return original_parse(text, rule_name=rule_name, trace=trace)

    def parse_and_convert(text, rule_name="start", trace=False, **kwargs):
        if kwargs or not isinstance(text, str):  # an unusual call: the original, uncached
            return original_parse(text, rule_name=rule_name, trace=trace, **kwargs)
        return deepcopy(_cached_parse(text, rule_name, bool(trace)))

    original_query = Rule.parse_conjunctive_query.__func__

    @functools.cache
    def _cached_query(expr: str):
        return original_query(Rule, expr)

    def parse_conjunctive_query(cls, expr):
        if cls is not Rule or not isinstance(expr, str):
            return original_query(cls, expr)
        cached = _cached_query(expr)
        # a new Rule over the cached (immutable) predicates: nobody shares a mutable list
        return Rule(cached.name, list(cached.preconditions), [])

    def copy_symbol(self, context):
        own = self.context
        self.context = {}
        try:
            copied = deepcopy(self)
        finally:
            self.context = own
        copied.context = textgen.copy_context(context)
        return copied

    from textworld.generator.game import EntityInfo
    from textworld.logic import Placeholder, Variable

    shareable = (Variable, Placeholder, EntityInfo, str, int, float, bool, type(None))
    original_copy_context = textgen.copy_context

    def copy_context(context):
        # The values are the engine's entity records and logic variables, which text generation
        # only reads ({o.name}, {r.indefinite}, ...): fresh dicts over the same values are what a
        # deep copy gives to every reader. Anything else falls back to the deep copy.
        variables, mapping = context["variables"], context["mapping"]
        if not (all(isinstance(v, shareable) for v in variables.values())
                and all(isinstance(k, shareable) and isinstance(v, shareable) for k, v in mapping.items())):
            return original_copy_context(context)
        return {"state": context["state"], "facts": context["facts"], "variables": dict(variables),
                "mapping": dict(mapping), "entity_infos": context["entity_infos"]}

    import fast_downward

    original_pddl2sas = fast_downward.pddl2sas

    @functools.lru_cache(maxsize=64)
    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False):
        # A pure function of its strings (PddlState only reads the task it returns): a game's
        # load and every later reset of it translate the same problem, 2 translations each.
        if _DISK is None or verbose:
            return original_pddl2sas(domain, problem, verbose=verbose, optimize=optimize)
        return kept_result(_DISK, "fast-downward-textworld", ["pddl2sas", str(bool(optimize)), domain, problem],
                           lambda: original_pddl2sas(domain, problem, verbose=False, optimize=optimize))

    import textworld.envs.pddl.logic as pddl_logic

    original_logic_parse = pddl_logic._parse_and_convert

    def logic_parse(text, rule_name="start", **kwargs):
        # GameLogic's parse of a game's grammar (its actions and text grammar), a pure function of
        # the text; GameLogic only copies what it returns into its own dicts.
        if _DISK is None or kwargs or rule_name != "pddlStart" or not isinstance(text, str):
            return original_logic_parse(text, rule_name=rule_name, **kwargs)
        return kept_result(_DISK, "textworld", ["pddl-logic-parse", rule_name, text],
                           lambda: original_logic_parse(text, rule_name=rule_name))

    textgen.copy_context = copy_context
    pddl_logic._parse_and_convert = logic_parse
    fast_downward.pddl2sas = pddl2sas
    textgen._parse_and_convert = parse_and_convert
    Rule.parse_conjunctive_query = classmethod(parse_conjunctive_query)
    textgen.Symbol.copy = copy_symbol
    _INSTALLED = True
    return True


@functools.cache
def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def kept_path(disk_dir: Path, package: str, parts: list[str]) -> Path:
    """Where the result of a pure function of `parts` (strings), computed by `package`, is kept:
    named by a hash of the package's version and the parts."""
    key = hashlib.sha256("\0".join([package, _version(package), *parts]).encode()).hexdigest()
    return disk_dir / key[:2] / f"{key}.pkl.z"


def kept_result(disk_dir: Path, package: str, parts: list[str], compute):
    """The kept result, else `compute()` kept now (a missing, unreadable or corrupt file is
    computed again and replaced; a folder that cannot be written only loses the keeping)."""
    path = kept_path(disk_dir, package, parts)
    try:
        return pickle.loads(zlib.decompress(path.read_bytes()))
    except (OSError, zlib.error, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
        pass  # missing, unreadable or damaged (a crash cannot leave one: writes are atomic)
    result = compute()
    blob = zlib.compress(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL), 1)
    tmp = None
    try:  # atomic: a temporary sibling, then rename (workers of several runs may race: both are right)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(handle, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return result


def disk_dir() -> str | None:
    """The folder this process keeps the engine's results in (None: memory only)."""
    return str(_DISK) if _DISK is not None else None


def installed() -> bool:
    """Whether this process runs the patched engine."""
    return _INSTALLED
