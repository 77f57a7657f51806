"""Paper tables from the runs DataFrame: numbers per (group, method), rendered as Markdown, LaTeX, CSV."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis.collect import DEGENERACY, SPLITS, TASK_TYPES, VERBS, col, write_atomic
from analysis.compare import BASELINE_NAMES, REPLICATES, comparison_stats

ROW_KEYS = ["group", "order", "label", "method", "verifier_free", "reference"]
SPLIT_HEADERS = {"valid_seen": "Seen", "valid_unseen": "Unseen", "all": "All"}
ABLATIONS = ("no_gate", "no_conf", "no_norm")
DAGGER_NOTE = ("† Not verifier-free: reads the environment's success signal (the oracle gate: an upper bound; "
               "ATOD: its RL reward).")


@dataclass(frozen=True)
class Column:
    """One numeric column: `key` (and `key_std`, if present) in the stats frame."""

    key: str
    header: str
    best: str | None = "max"  # "max", "min", or None for no bold
    signed: bool = False


@dataclass
class Table:
    """A table: numbers per row in `stats` (written as CSV) and how to show them."""

    name: str
    title: str
    caption: str  # what the numbers are; LaTeX gets it as a comment to reuse in \caption
    stats: pd.DataFrame
    columns: list[Column]
    notes: list[str] = field(default_factory=list)  # what the marks (†, ‡) mean


def aggregate(runs: pd.DataFrame, columns: dict[str, str], scale: dict[str, float] | None = None
              ) -> pd.DataFrame:
    """Mean and sample std (ddof=1; NaN for one seed) over seeds of runs columns, renamed and scaled."""
    scale = scale or {}
    grouped = runs.groupby(ROW_KEYS, sort=True, dropna=False)
    stats = grouped.size().rename("n_seeds").to_frame()
    for source, name in columns.items():
        values = runs[source] if source in runs else pd.Series(math.nan, index=runs.index)
        values = values.astype(float) * scale.get(name, 100.0)
        by_row = values.groupby([runs[k] for k in ROW_KEYS], sort=True, dropna=False)
        stats[name], stats[f"{name}_std"] = by_row.mean(), by_row.std(ddof=1)
    return stats.reset_index()


def _notes(stats: pd.DataFrame) -> list[str]:
    notes = []
    fewer = ~stats["reference"] & (stats["n_seeds"] < stats.groupby("group")["n_seeds"].transform("max"))
    if fewer.any():
        notes.append("‡ Fewer seeds than the other methods of the table; report.md lists the missing runs.")
    if not stats["verifier_free"].all():
        notes.append(DAGGER_NOTE)
    return notes


def main_table(runs: pd.DataFrame) -> Table:
    """Success per split with the relative improvement over OPD on valid_unseen."""
    stats = aggregate(runs, {col(s, "success"): s for s in (*SPLITS, "all")})
    stats["rel_impr_unseen"] = math.nan
    for _, rows in stats.groupby("group"):
        opd = rows.loc[rows["method"] == "opd", "valid_unseen"]
        if len(opd) == 1 and opd.iloc[0] > 0:  # the methods only: a reference row is context
            methods_ = rows[~rows["reference"]]
            stats.loc[methods_.index, "rel_impr_unseen"] = 100 * (methods_["valid_unseen"] - opd.iloc[0]) / opd.iloc[0]
    games = {s: runs[col(s, "num_games")].dropna().astype(int) for s in SPLITS if col(s, "num_games") in runs}
    counts = ", ".join(f"{s} {g.min()}" + (f"-{g.max()}" if g.max() != g.min() else "") + " games"
                       for s, g in games.items() if not g.empty)
    columns = [Column(s, SPLIT_HEADERS[s]) for s in (*SPLITS, "all")]
    columns.append(Column("rel_impr_unseen", "Rel. impr. vs OPD, unseen (%)", signed=True))
    caption = (f"Success rate (%), mean ± sample std over seeds (one seed: no ±); {counts}; "
               "All pools both splits by game count. Rel. impr. = 100 (SR - SR_OPD) / SR_OPD on unseen "
               "means; blank without exactly one OPD row (or with OPD at 0). Bold: best verifier-free value.")
    return Table("main", "Main results: ALFWorld success rate (%)", caption, stats, columns, _notes(stats))


def task_type_table(runs: pd.DataFrame) -> Table:
    """Success per ALFWorld task type, one block per split."""
    tasks = list(TASK_TYPES) + sorted({c.split(".", 2)[2] for c in runs.columns
                                       if c.startswith("valid_seen.success.") or c.startswith("valid_unseen.success.")}
                                      - set(TASK_TYPES))
    parts = []
    for split in (*SPLITS, "all"):
        columns = {col(split, "success", t): TASK_TYPES.get(t, t) for t in tasks}
        columns[col(split, "success")] = "All types"
        part = aggregate(runs, columns)
        part["group"] = [", ".join(filter(None, [f"split={split}", g])) for g in part["group"]]
        if part[list(columns.values())].notna().any().any():  # leave out a split no run evaluated
            parts.append(part)
    stats = pd.concat(parts, ignore_index=True)
    columns = [Column(TASK_TYPES.get(t, t), TASK_TYPES.get(t, t)) for t in tasks]
    columns.append(Column("All types", "All types"))
    stats = stats.dropna(axis=1, how="all")
    columns = [c for c in columns if c.key in stats]
    return Table("per_task_type", "Success rate (%) per ALFWorld task type",
                 "Success rate (%) per task type, mean ± sample std over seeds. Bold: best verifier-free value.",
                 stats, columns, _notes(stats))


def ablation_table(runs: pd.DataFrame) -> Table | None:
    """SAGE-OPD against its ablations, with differences to SAGE-OPD in points; None if either is missing."""
    runs = runs[runs["method"].isin(("sage", *ABLATIONS))]
    if not (runs["method"] == "sage").any() or runs["method"].eq("sage").all():
        return None
    stats = aggregate(runs, {col(s, "success"): s for s in (*SPLITS, "all")})
    columns = []
    for split in (*SPLITS, "all"):
        stats[f"delta_{split}"] = math.nan
        for _, rows in stats.groupby("group"):
            sage = rows.loc[rows["method"] == "sage", split]
            if len(sage) == 1:
                stats.loc[rows.index, f"delta_{split}"] = rows[split] - sage.iloc[0]
        stats.loc[stats["method"] == "sage", f"delta_{split}"] = math.nan
        columns += [Column(split, SPLIT_HEADERS[split]),
                    Column(f"delta_{split}", f"Δ {SPLIT_HEADERS[split]}", best=None, signed=True)]
    caption = ("Success rate (%), mean ± sample std over seeds; Δ = difference of means to SAGE-OPD "
               "in points (blank unless the group has exactly one SAGE-OPD row). Bold: best value.")
    return Table("ablation", "Ablations of SAGE-OPD", caption, stats, columns, _notes(stats))


def degeneracy_table(runs: pd.DataFrame) -> Table:
    """Repeated-action rate, invalid-action rate (%) and mean turns per episode in evaluation."""
    headers = {"repeated_action_rate": "Repeated (%)", "invalid_action_rate": "Invalid (%)",
               "mean_turns": "Turns"}
    columns = {col(s, m): f"{SPLIT_HEADERS[s]} {headers[m]}" for s in SPLITS for m in DEGENERACY}
    stats = aggregate(runs, columns, scale={n: 1.0 for n in columns.values() if n.endswith("Turns")})
    caption = ("Evaluation episodes; mean ± sample std over seeds. Lower is better (an episode ends at "
               "success or the step limit, so fewer turns means faster success); bold: best verifier-free.")
    return Table("degeneracy", "Degenerate behaviour in evaluation", caption, stats,
                 [Column(n, n, best="min") for n in columns.values()], _notes(stats))


def actions_table(runs: pd.DataFrame) -> Table | None:
    """Evaluation commands per 100 episodes by verb; None if no run kept its evaluation episodes."""
    keys = [c for c in (*(f"actions.{v}" for v in VERBS), "actions.other") if c in runs]
    if not keys or runs[keys].isna().all().all():
        return None
    keys = [k for k in keys if runs[k].fillna(0).ne(0).any()]  # a verb no agent used is no column
    names = {k: k.split(".", 1)[1] for k in keys}
    stats = aggregate(runs.dropna(subset=keys, how="all"), names, scale=dict.fromkeys(names.values(), 1.0))
    caption = ("Commands per 100 evaluation episodes (both splits), by the command's first word, valid or "
               "not; mean ± sample std over seeds. A verb a method stops using shows as 0.0: the task "
               "types that need it (use: Look, a lamp; heat, cool, clean) cannot be won.")
    return Table("actions", "What the agents do in evaluation: commands by verb", caption, stats,
                 [Column(n, n, best=None) for n in names.values()], _notes(stats))


def comparison_table(runs: pd.DataFrame, games: pd.DataFrame, baseline: str = "opd") -> Table | None:
    """Each method's difference to the baseline (OPD, or the warm start) with a 95% interval
    (paired bootstrap over games and seeds)."""
    stats = comparison_stats(runs, games, baseline)
    if stats.empty:
        return None
    name = BASELINE_NAMES.get(baseline, baseline)
    columns = [Column("unseen_delta", "Δ Unseen", best=None, signed=True),
               Column("unseen_low", "Unseen 95% low", best=None, signed=True),
               Column("unseen_high", "Unseen 95% high", best=None, signed=True),
               Column("all_delta", "Δ All", best=None, signed=True),
               Column("all_low", "All 95% low", best=None, signed=True),
               Column("all_high", "All 95% high", best=None, signed=True),
               Column("p_above", "P(Δ All > 0) (%)", best=None)]
    games_n = stats["games"].dropna().astype(int)
    base_seeds = sorted(set(runs.loc[runs["method"] == baseline, "seed"]))
    caption = (f"Success-rate difference to {name} ({len(base_seeds)} seed(s)) in points on the same games ({games_n.min()}"
               + (f"-{games_n.max()}" if games_n.max() != games_n.min() else "")
               + " in All), with the 2.5-97.5 percentiles of a paired bootstrap that draws the games "
               f"and each method's seeds ({REPLICATES} replicates, rng seed 0). An interval holding 0 means "
               f"the ordering against {name} is noise at this size. One seed: its seed noise is not in the "
               "interval (too narrow). P(Δ All > 0): share of replicates where the method is ahead.")
    table_name = "comparison" if baseline == "opd" else f"comparison_{baseline}"
    return Table(table_name, f"Difference to {name}, with 95% bootstrap intervals", caption, stats, columns,
                 _notes(stats))


PHASES = ("rollout", "judge", "scoring", "update")  # train.py's time_<phase>_s, in the order they run
ROLLOUT_PARTS = ("generate", "env")  # time_generate_s, time_env_s: parts of time_rollout_s, shown after it


def cost_table(runs: pd.DataFrame, curves: pd.DataFrame) -> Table | None:
    """Wall time per run and the training step's time split, per method; None without timed steps.

    Per run: wall time of its result.json (the attempt that finished: a resumed run's earlier
    attempts are not in it), training time = the sum of its logged `time_step_s`, and the mean
    seconds per step of each phase. The notes give the sweep's total wall time over run folders."""
    if curves.empty or "time_step_s" not in curves:
        return None
    timed = curves.dropna(subset=["time_step_s"])
    per_run = timed.groupby("run").agg(steps=("step", "size"), train_s=("time_step_s", "sum"),
                                       step_s=("time_step_s", "mean"),
                                       **{p: (f"time_{p}_s", "mean") for p in PHASES + ROLLOUT_PARTS
                                          if f"time_{p}_s" in timed})
    methods = runs[~runs["reference"]].merge(per_run, left_on="run", right_index=True)
    if methods.empty:
        return None
    methods = methods.assign(wall_min=methods["wall_time_s"].astype(float) / 60, train_min=methods["train_s"] / 60)
    phases = [p for p in PHASES if p in methods and methods[p].notna().any()]
    parts = [p for p in ROLLOUT_PARTS if "rollout" in phases and p in methods and methods[p].notna().any()]
    shown = [c for p in phases for c in ([p, *parts] if p == "rollout" else [p])]
    names = {"wall_min": "Wall (min)", "train_min": "Training (min)", "steps": "Steps", "step_s": "Step (s)",
             **{p: f"{p.capitalize()} (s)" for p in shown}}
    stats = aggregate(methods, names, scale={n: 1.0 for n in names.values()})
    walls = runs.dropna(subset=["wall_time_s"]).drop_duplicates("run")["wall_time_s"].astype(float)
    notes = [f"Sweep: {len(walls)} run folders, {walls.sum() / 3600:.2f} h of wall time in all "
             f"(the sum of their result.json wall times; runs one after another take that long)."]
    caption = ("Mean ± sample std over seeds. Wall: the run's finishing attempt, from start to result.json "
               "(training, evaluation, loading). Training: the sum of the logged step times. Step and its "
               "phases (" + ", ".join(phases) + "): seconds per training step, means over the run's steps; "
               "the phases add up to the step"
               + ("; Generate and Env are the parts of Rollout spent generating and in the env engine" if parts else "")
               + ". Times depend on the machine and on what ran beside the run.")
    return Table("cost", "Wall time and training-step time split", caption, stats,
                 [Column(n, n, best=None) for n in names.values()], _notes(stats) + notes)


def _cell(mean: float, std: float, signed: bool) -> str:
    if mean is None or math.isnan(mean):
        return ""
    mean = 0.0 if round(mean, 1) == 0 else mean  # never print "-0.0"
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return text if std is None or math.isnan(std) else f"{text} ± {std:.1f}"


def cells(table: Table) -> list[tuple[str, list[tuple[str, list[str], list[bool]]]]]:
    """[(group, [(row label, cell texts, bold flags)])]: the shared layout of Markdown and LaTeX."""
    out = []
    for group, rows in table.stats.groupby("group", sort=False):
        rows = rows.sort_values(["order", "label"])
        bold = {}
        for c in table.columns:
            # Python's round on both sides, so bold matches what the .1f text shows.
            # reference rows (the teacher, the warm start) are context, never "best"
            eligible = [round(v, 1) for v in rows.loc[rows["verifier_free"] & ~rows["reference"], c.key].dropna()]
            bold[c.key] = (max(eligible) if c.best == "max" else min(eligible)) \
                if c.best and len(eligible) >= 2 else None
        most = rows["n_seeds"].max()
        body = []
        for _, row in rows.iterrows():
            texts = [_cell(row[c.key], row.get(f"{c.key}_std", math.nan), c.signed) for c in table.columns]
            flags = [bold[c.key] is not None and not math.isnan(row[c.key]) and row["verifier_free"]
                     and not row["reference"]
                     and round(row[c.key], 1) == bold[c.key] for c in table.columns]
            texts.append(f"{row['n_seeds']}" + (" ‡" if row["n_seeds"] < most and not row["reference"] else ""))
            body.append((row["label"], texts, flags + [False]))
        out.append((group, body))
    return out


def to_markdown(table: Table) -> str:
    """GitHub Markdown: a title, one table per group, then the notes."""
    headers = ["Method", *[c.header for c in table.columns], "Seeds"]
    lines = [f"**{table.title}**", ""]
    for group, body in cells(table):
        if group:
            lines += [f"*{group}*", ""]
        lines += ["| " + " | ".join(headers) + " |", "|:--" + "|--:" * (len(headers) - 1) + "|"]
        for label, texts, flags in body:
            texts = [f"**{t}**" if f else t for t, f in zip(texts, flags, strict=True)]
            lines.append("| " + " | ".join([label, *texts]) + " |")
        lines.append("")
    return "\n".join(lines + [table.caption, *table.notes]) + "\n"


def tex_escape(text: str) -> str:
    """Escape LaTeX specials and turn ±, †, ‡, Δ into math."""
    text = text.replace("\\", "\0")
    for char in "&%$#_{}":
        text = text.replace(char, "\\" + char)
    text = text.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")
    text = text.replace("\0", r"\textbackslash{}")
    for char, math_text in {"±": r"$\pm$", "†": r"$^\dagger$", "‡": r"$^\ddagger$", "Δ": r"$\Delta$"}.items():
        text = text.replace(char, math_text)
    return text


def to_latex(table: Table) -> str:
    """A booktabs tabular fragment (needs \\usepackage{booktabs}); the marks' notes are its last rows.

    Nothing outside the tabular, so it also works inside \\resizebox; the caption is a comment."""
    width = len(table.columns) + 2
    headers = ["Method", *[c.header for c in table.columns], "Seeds"]
    lines = [f"% {tex_escape(table.title)}. {tex_escape(table.caption)}", "\\begin{tabular}{l" + "r" * (width - 1) + "}", "\\toprule",
             " & ".join(tex_escape(h) for h in headers) + " \\\\", "\\midrule"]
    for number, (group, body) in enumerate(cells(table)):
        if group:
            lines += ["\\midrule"] if number else []
            lines.append(f"\\multicolumn{{{width}}}{{l}}{{\\emph{{{tex_escape(group)}}}}} \\\\")
        for label, texts, flags in body:
            texts = [re.sub(r"^-(?=\d)", "$-$", tex_escape(t)) for t in texts]  # minus, not hyphen
            texts = [f"\\textbf{{{t}}}" if f else t for t, f in zip(texts, flags, strict=True)]
            lines.append(" & ".join([tex_escape(label), *texts]) + " \\\\")
    lines.append("\\bottomrule")
    lines += [f"\\multicolumn{{{width}}}{{@{{}}l}}{{\\footnotesize {tex_escape(note)}}} \\\\" for note in table.notes]
    lines.append("\\end{tabular}")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """The numbers behind the table (percent), one row per (group, method)."""
    keys = [k for c in table.columns for k in (c.key, f"{c.key}_std") if k in table.stats]
    frame = table.stats[["group", "method", "label", "verifier_free", "n_seeds", *keys]]
    return frame.to_csv(index=False, float_format="%.4f")


def build_tables(runs: pd.DataFrame, curves: pd.DataFrame | None = None,
                 games: pd.DataFrame | None = None) -> tuple[list[Table], list[str]]:
    """Every table that the runs (their training curves for the cost table, their per-game outcomes
    for the comparison table) allow, and a note for each one left out."""
    tables = [main_table(runs), task_type_table(runs)]
    skipped = []
    comparison = comparison_table(runs, games if games is not None else pd.DataFrame())
    if comparison is None:
        skipped.append("comparison table left out: it needs evaluation episodes (eval_episodes.jsonl) "
                       "of OPD and of another method")
    else:
        tables.append(comparison)
    to_warm_start = comparison_table(runs, games if games is not None else pd.DataFrame(), "warm_start")
    if to_warm_start is not None:  # only where a `mode=eval` run kept the warm start's episodes
        tables.append(to_warm_start)
    ablation = ablation_table(runs)
    if ablation is None:
        skipped.append("ablation table left out: it needs complete runs of sage and of at least one of "
                       + ", ".join(ABLATIONS))
    else:
        tables.append(ablation)
    tables.append(degeneracy_table(runs))
    actions = actions_table(runs)
    if actions is None:
        skipped.append("actions table left out: no run kept its evaluation episodes (eval_episodes.jsonl)")
    else:
        tables.append(actions)
    cost = cost_table(runs, curves if curves is not None else pd.DataFrame())
    if cost is None:
        skipped.append("cost table left out: no training run logged step times (time_step_s in metrics.jsonl)")
    else:
        tables.append(cost)
    return tables, skipped


def write_tables(tables: list[Table], out_dir: Path) -> list[Path]:
    """Write each table as .md, .tex and .csv under out_dir; return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in tables:
        for suffix, render in ((".md", to_markdown), (".tex", to_latex), (".csv", to_csv)):
            path = out_dir / f"{table.name}{suffix}"
            write_atomic(path, render(table))
            paths.append(path)
    return paths
