"""Find run records below sweep folders and load them into pandas DataFrames (see RUN_RECORD.md)."""

from __future__ import annotations

import fnmatch
import gzip
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.records import _natural_key, _read_json, find_run_dirs, flatten, write_atomic  # noqa: F401

SPLITS = ("valid_seen", "valid_unseen")
TASK_TYPES = {
    "pick_and_place_simple": "Pick",
    "look_at_obj_in_light": "Look",
    "pick_clean_then_place_in_recep": "Clean",
    "pick_heat_then_place_in_recep": "Heat",
    "pick_cool_then_place_in_recep": "Cool",
    "pick_two_obj_and_place": "Pick2",
}
DEGENERACY = ("repeated_action_rate", "invalid_action_rate", "mean_turns")
# Order of rows and display names; `names=` overrides or extends it.
METHOD_NAMES = {
    "teacher": "Teacher (reference)",
    "warm_start": "Student warm start",
    "sft": "SFT",
    "opd": "OPD",
    "gkd": "GKD",
    "sage": "SAGE-OPD",
    "no_gate": "w/o gating",
    "no_conf": "w/o confidence",
    "no_norm": "w/o normalization",
    "oracle_gate": "Oracle gate",
    "guided_opd": "Guided-OPD",
    "tcod": "TCOD",
    "atod": "ATOD",  # not verifier-free: its rows get † from the run record, as oracle_gate's
}
# Reference rows: a result.json's extra evaluations, each shown as a row of its own.
REFERENCE_EVALS = {"teacher_eval": "teacher", "initial_eval": "warm_start"}
# The evaluation episodes behind each evaluation: the run's own, and its reference evaluations'.
EPISODE_FILES = {"eval": "eval_episodes.jsonl", "teacher_eval": "eval_teacher_episodes.jsonl",
                 "initial_eval": "eval_initial_episodes.jsonl"}
# ALFWorld command verbs counted in the actions table (examine, look, inventory... count as other).
VERBS = ("go", "open", "close", "take", "move", "use", "heat", "cool", "clean")
# Used only when a result.json lacks the `verifier_free` flag.
NOT_VERIFIER_FREE = {"oracle_gate", "atod"}
# Keys that name places or jobs: they differ between runs without changing the experiment.
IGNORED_KEYS = ("seed", "method.name", "*dir", "*path", "*output*", "hydra.*", "*job*", "*timestamp*")


@dataclass
class Excluded:
    """A run left out of the tables, and why."""

    run_dir: str
    method: str | None
    seed: int | None
    reason: str


@dataclass
class Collection:
    """Complete runs (one row each), their training curves (one row per run and step), per-game
    evaluation outcomes (one row per run, row label and game: `games`), and the rest."""

    runs: pd.DataFrame
    curves: pd.DataFrame
    excluded: list[Excluded] = field(default_factory=list)
    group_keys: list[str] = field(default_factory=list)
    variant_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    games: pd.DataFrame = field(default_factory=pd.DataFrame)


def col(split: str, metric: str, task: str | None = None) -> str:
    """Column name of a metric in the runs DataFrame, e.g. `valid_seen.success.Pick`."""
    return f"{split}.{metric}" + (f".{task}" if task else "")


def read_curves(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """metrics.jsonl -> one row per step (last line wins for a repeated step) and problems met."""
    rows, problems = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
            rows.append(row)
        except ValueError as err:
            problems.append(f"{path}: line {number} unreadable ({err}), skipped")
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.drop_duplicates("step", keep="last").sort_values("step", ignore_index=True)
    return frame, problems


def read_episodes(run_dir: Path, evaluation: str = "eval") -> tuple[dict[str, float], dict, list[str]]:
    """An evaluation's episodes file (`.jsonl`, or `.jsonl.gz` as `--copy-records` writes it) ->
    (commands per 100 episodes by verb as `actions.<verb>` / `actions.other` columns,
    {(split, game): mean of `won` over its episodes}, problems). Nothing without the file.
    A command counts by its first word; a game is named by the last two folders of its file."""
    path = run_dir / EPISODE_FILES[evaluation]
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        path = path.with_name(path.name + ".gz")
    if not path.exists():
        return {}, {}, []
    counts = dict.fromkeys((*VERBS, "other"), 0)
    won: dict[tuple[str, str], list[bool]] = {}
    episodes = 0
    try:
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for line in filter(str.strip, text.splitlines()):
            episode = json.loads(line)
            episodes += 1
            for turn in episode["turns"]:
                verb = (str(turn["action"]).split() or [""])[0].lower()
                counts[verb if verb in counts else "other"] += 1
            if episode.get("gamefile") and episode.get("split"):
                game = "/".join(Path(str(episode["gamefile"])).parts[-3:-1])
                won.setdefault((str(episode["split"]), game), []).append(bool(episode["won"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return {}, {}, [f"{path}: unreadable episodes ({type(err).__name__}: {err}); "
                        "no actions or per-game outcomes for this row"]
    if not episodes:
        return {}, {}, [f"{path}: no episodes; no actions or per-game outcomes for this row"]
    return ({f"actions.{verb}": 100 * n / episodes for verb, n in counts.items()},
            {key: sum(v) / len(v) for key, v in won.items()}, [])


def _pooled(values: list[tuple[float, float]]) -> float:
    """Game-count weighted mean of (value, games) pairs; NaN if any part is missing."""
    if len(values) < len(SPLITS) or any(v is None or n is None or n <= 0 for v, n in values):
        return math.nan
    return sum(v * n for v, n in values) / sum(n for _, n in values)


def _eval_columns(evaluation: dict) -> dict[str, float]:
    """Flatten result.json's eval block into runs-DataFrame columns, with the pooled 'all' split."""
    row: dict[str, float] = {}
    tasks: set[str] = set()
    for split in SPLITS:
        block = evaluation.get(split)
        if not isinstance(block, dict):
            continue
        success = block.get("success")
        if not isinstance(success, (int, float)) or not 0 <= success <= 1:
            raise ValueError(f"eval.{split}.success is {success!r}; it must be a fraction in [0, 1]")
        row[col(split, "success")] = float(success)
        row[col(split, "num_games")] = block.get("num_games")
        for metric in DEGENERACY:
            row[col(split, metric)] = block.get(metric, math.nan)
        for task, numbers in (block.get("per_task_type") or {}).items():
            tasks.add(task)
            row[col(split, "success", task)] = numbers.get("success", math.nan)
            row[col(split, "num_games", task)] = numbers.get("num_games")
    if col(SPLITS[0], "success") not in row and col(SPLITS[1], "success") not in row:
        raise ValueError("eval holds neither valid_seen nor valid_unseen results")
    for metric in ("success", *DEGENERACY):
        row[col("all", metric)] = _pooled([
            (row.get(col(s, metric)), row.get(col(s, "num_games"))) for s in SPLITS
            if col(s, metric) in row])
    for task in tasks:
        row[col("all", "success", task)] = _pooled([
            (row.get(col(s, "success", task)), row.get(col(s, "num_games", task))) for s in SPLITS
            if col(s, "success", task) in row])
    return row


def load_run(run_dir: Path, root: Path) -> tuple[list[dict], Excluded | None, list[str]]:
    """One run directory -> (runs-DataFrame rows, None, notes) or ([], why excluded, notes).

    The run is named by its path relative to `root`. Its own evaluation is one row; the
    reference evaluations of its result.json (`teacher_eval`, `initial_eval`) are rows of the
    methods `teacher` and `warm_start`."""
    row, why, notes = _load_run(run_dir, root)
    if row is None:
        return [], why, notes
    result = row.pop("_result")
    row["reference"] = row["method"] in REFERENCE_EVALS.values()  # e.g. mode=eval of the untrained student
    actions, games, problems = read_episodes(run_dir)
    row.update(actions, _games=games)
    notes += problems
    rows = [row]
    for key, method in REFERENCE_EVALS.items():
        if isinstance(result.get(key), dict):
            try:
                actions, games, problems = read_episodes(run_dir, key)
                notes += problems
                rows.append({**{k: v for k, v in row.items() if not k.startswith(SPLITS + ("all.", "actions."))},
                             **_eval_columns(result[key]), **actions, "_games": games,
                             "method": method, "verifier_free": True,
                             "reference": True, "wall_time_s": None})
            except (ValueError, AttributeError, TypeError) as err:
                notes.append(f"{row['run']}: {key} left out, malformed: {err}")
    return rows, None, notes


def _load_run(run_dir: Path, root: Path) -> tuple[dict | None, Excluded | None, list[str]]:
    name = str(run_dir.relative_to(root))
    notes: list[str] = []
    config, config_error = ({}, None)
    if (run_dir / "config.json").exists():
        config, config_error = _read_json(run_dir / "config.json")
    config = config if isinstance(config, dict) else {}
    method = (config.get("method") or {}).get("name") if isinstance(config.get("method"), dict) else None
    seed = config.get("seed")
    if not (run_dir / "result.json").exists():
        why = "incomplete: no result.json (still running, or killed before the end)"
        if (run_dir / "metrics.jsonl").exists():
            curves, _ = read_curves(run_dir / "metrics.jsonl")
            why += f"; last logged step {int(curves['step'].max())}" if not curves.empty else "; no step logged"
        if config_error:
            why += f"; {config_error}"
        return None, Excluded(name, method, seed, why), notes
    result, error = _read_json(run_dir / "result.json")
    if error or not isinstance(result, dict):
        return None, Excluded(name, method, seed, error or "result.json is not a JSON object"), notes
    method, seed = result.get("method", method), result.get("seed", seed)
    status = result.get("status")
    if status != "complete":
        reason = (f"failed: {result.get('error') or 'no error message recorded'}" if status == "failed"
                  else f"status {status!r} in result.json (expected 'complete' or 'failed')")
        return None, Excluded(name, method, seed, reason), notes
    if not method or seed is None:
        return None, Excluded(name, method, seed, "result.json names no method or seed"), notes
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        return None, Excluded(name, method, None, f"seed {seed!r} in result.json is not an integer"), notes
    try:
        row = _eval_columns(result.get("eval") or {})
    except (ValueError, AttributeError, TypeError) as err:
        return None, Excluded(name, method, seed, f"result.json eval block malformed: {err}"), notes
    verifier_free = result.get("verifier_free")
    if verifier_free is None:
        verifier_free = method not in NOT_VERIFIER_FREE
    full_config = result.get("config") if isinstance(result.get("config"), dict) else config
    row.update({"run": name, "run_dir": str(run_dir), "method": str(method), "seed": seed,
                "verifier_free": bool(verifier_free), "wall_time_s": result.get("wall_time_s"),
                "experiment": full_config.get("experiment"), "_config": flatten(full_config),
                "_mtime": (run_dir / "result.json").stat().st_mtime, "_result": result})
    row.update({f"version.{k}": v for k, v in (result.get("versions") or {}).items()})
    if config_error:
        notes.append(f"{name}: {config_error}; used the config inside result.json")
    return row, None, notes


def _ignored(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _keys_varying_within_method_and_seed(configs: pd.DataFrame, runs: pd.DataFrame) -> list[str]:
    """Config keys that differ between runs of the same method and seed (they define the experiment)."""
    keys = []
    for key in configs.columns:
        values = configs[key].map(lambda v: json.dumps(v, sort_keys=True, default=str))
        if (values.groupby([runs["method"], runs["seed"]]).nunique() > 1).any():
            keys.append(key)
    return keys


def _format_value(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unset"
    return str(value)


def method_order(names: dict[str, str] | None = None) -> dict[str, str]:
    """Known methods in table order with their display names, after applying the overrides."""
    return {**METHOD_NAMES, **(names or {})}


def collect(sweep_dirs: Sequence[str | Path], names: dict[str, str] | None = None,
            ignore_keys: Sequence[str] = (), where: dict[str, str] | None = None,
            skip: Iterable[Path] = ()) -> Collection:
    """Load every run below the sweep folders; label rows, find group keys, and set aside bad runs."""
    roots = [Path(d).resolve() for d in sweep_dirs]
    run_dirs = find_run_dirs(roots, skip)
    if not run_dirs:
        raise FileNotFoundError(
            f"no run records found below {', '.join(map(str, sweep_dirs))}: a run folder holds "
            "config.json, metrics.jsonl or result.json (see analysis/RUN_RECORD.md)")
    rows, excluded, notes = [], [], []
    for run_dir in run_dirs:
        root = next(r for r in roots if run_dir.is_relative_to(r))
        found, why, run_notes = load_run(run_dir, root.parent)
        notes += run_notes
        rows += found
        if why is not None:
            excluded.append(why)
    runs = pd.DataFrame(rows)
    if runs.empty:
        return Collection(runs, pd.DataFrame(), excluded, notes=notes)
    configs = pd.DataFrame(list(runs.pop("_config")), index=runs.index)
    for key, value in (where or {}).items():
        if key not in configs.columns:
            raise KeyError(f"--where {key}={value}: no run has config key {key!r}; "
                           f"keys look like {', '.join(sorted(configs.columns)[:8])}, ...")
        keep = configs[key].map(str) == value
        notes.append(f"--where {key}={value}: kept {int(keep.sum())} of {len(keep)} complete runs")
        runs, configs = runs[keep], configs[keep]
    if runs.empty:
        return Collection(runs, pd.DataFrame(), excluded, notes=notes)

    varying = [k for k in configs.columns if configs[k].map(str).nunique() > 1]
    for key in varying:
        runs[f"cfg.{key}"] = configs[key]
    candidates = configs[[k for k in configs.columns if not _ignored(k, (*IGNORED_KEYS, *ignore_keys))]]
    split_keys = _keys_varying_within_method_and_seed(candidates, runs)
    # Two experiments are never pooled, even when their methods and seeds do not overlap.
    if "experiment" in varying and "experiment" not in split_keys:
        split_keys.insert(0, "experiment")
    variant_keys = [k for k in split_keys if k.startswith("method.")]
    group_keys = [k for k in split_keys if not k.startswith("method.")]

    def describe(row: pd.Series, keys: list[str]) -> str:
        return ", ".join(f"{k}={_format_value(configs.at[row.name, k])}" for k in keys)

    # A variant key names only the methods it varies for, without the "method." prefix.
    by_method = configs.groupby(runs["method"])
    varies = {m: [k for k in variant_keys if by_method.get_group(m)[k].map(str).nunique() > 1]
              for m in runs["method"].unique()}

    def variant(row: pd.Series) -> str:
        return describe(row, varies[row["method"]]).replace("method.", "")

    display = method_order(names)
    order = {m: i for i, m in enumerate(display)}
    runs["group"] = runs.apply(describe, axis=1, keys=group_keys) if group_keys else ""
    runs["variant"] = runs.apply(variant, axis=1) if variant_keys else ""
    runs["order"] = runs["method"].map(lambda m: order.get(m, len(order)))
    runs["label"] = [
        display.get(m, m) + (f" ({v})" if v else "") + ("" if vf else "†")
        for m, v, vf in zip(runs["method"], runs["variant"], runs["verifier_free"], strict=True)]

    # The same method, seed and config twice (a rerun): keep the newest, report the others.
    runs = runs.sort_values("_mtime", ascending=False, kind="stable")
    duplicate = runs.duplicated(["group", "variant", "method", "seed"], keep="first")
    for _, old in runs[duplicate].iterrows():
        newer = runs[~duplicate & (runs["group"] == old["group"]) & (runs["label"] == old["label"])
                     & (runs["seed"] == old["seed"])]["run"].iloc[0]
        excluded.append(Excluded(old["run"], old["method"], int(old["seed"]),
                                 f"duplicate of {newer} (same method, seed and config); the newer run is used"))
    runs = runs[~duplicate].drop(columns="_mtime")
    runs = runs.sort_values(["group", "order", "label", "seed"], ignore_index=True)

    curve_frames = []
    for _, run in runs[~runs["reference"]].iterrows():  # a reference row's curves are its run's
        path = Path(run["run_dir"]) / "metrics.jsonl"
        if not path.exists():
            notes.append(f"{run['run']}: no metrics.jsonl, so no training curves for this run")
            continue
        frame, problems = read_curves(path)
        notes += problems
        for key in ("run", "method", "seed", "group", "label", "order"):
            frame[key] = run[key]
        curve_frames.append(frame)
    curves = pd.concat(curve_frames, ignore_index=True) if curve_frames else pd.DataFrame()
    games = pd.DataFrame([{"run": run, "method": method, "seed": seed, "group": group, "label": label,
                           "reference": reference, "split": split, "game": game, "won": won}
                          for run, method, seed, group, label, reference, outcomes in zip(
                              runs["run"], runs["method"], runs["seed"], runs["group"], runs["label"],
                              runs["reference"], runs.pop("_games"), strict=True)
                          for (split, game), won in outcomes.items()])
    return Collection(runs, curves, excluded, group_keys, variant_keys, notes, games)
