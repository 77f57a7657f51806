"""One call that collects runs, writes every table, plot and the report, and returns the main table."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

from analysis.collect import EPISODE_FILES, Collection, collect, write_atomic
from analysis.plots import write_plots
from analysis.tables import build_tables, to_markdown, write_tables


def _excluded_lines(collection: Collection) -> list[str]:
    return [f"- {e.run_dir} (method {e.method or '?'}, seed {'?' if e.seed is None else e.seed}): {e.reason}"
            for e in collection.excluded]


def _seed_lines(collection: Collection) -> list[str]:
    lines = []
    methods = collection.runs[~collection.runs["reference"]]  # one evaluation of a fixed model: no seeds
    for group, runs in methods.groupby("group"):
        seeds = runs.groupby("label")["seed"].apply(lambda s: sorted(s.tolist()))
        most = seeds.map(len).max()
        for label, have in seeds.items():
            if len(have) < most:
                where = f" [{group}]" if group else ""
                lines.append(f"- {label}{where}: {len(have)} seed(s) {have}, others have {most}; "
                             "its mean is over fewer seeds (‡ in the tables)")
    return lines


def _version_lines(collection: Collection) -> list[str]:
    lines = []
    for key in [c for c in collection.runs.columns if c.startswith("version.")]:
        for group, runs in collection.runs.groupby("group"):
            values = sorted(runs[key].dropna().astype(str).unique())
            if len(values) > 1:
                lines.append(f"- {key} differs between runs{f' of [{group}]' if group else ''}: "
                             f"{', '.join(values)}; check that the runs are comparable")
    return lines


def render_report(collection: Collection, sweep_dirs: Sequence[str | Path], extra: list[str]) -> str:
    """report.md: which runs were used, which were left out and why, seeds, grouping, warnings."""
    runs = collection.runs
    # folders, not rows: a reference run gives two rows (the warm start and the teacher)
    used, left = (runs["run"].nunique() if len(runs) else 0), len(collection.excluded)
    lines = ["# Analysis report", "", f"Sweep folders: {', '.join(map(str, sweep_dirs))}",
             f"Run folders found: {used + left}; complete and used: {used}; left out: {left}.", ""]
    if left:
        lines += ["## Left out of every table and plot", "", *_excluded_lines(collection), ""]
    seeds = _seed_lines(collection) if used else []
    if seeds:
        lines += ["## Methods with fewer seeds", "", *seeds, ""]
    if collection.group_keys or collection.variant_keys:
        lines += ["## Grouping", ""]
        if collection.group_keys:
            lines.append(f"- Rows are grouped by {', '.join(collection.group_keys)}: these config keys "
                         "differ between runs of the same method and seed. Analyse one group with "
                         "`--where KEY=VALUE`; merge groups with `--ignore-key KEY`.")
        if collection.variant_keys:
            lines.append(f"- Method rows are split by {', '.join(collection.variant_keys)}.")
        lines.append("")
    warnings = _version_lines(collection) if used else []
    notes = [f"- {n}" for n in (*collection.notes, *extra)]
    if warnings or notes:
        lines += ["## Notes", "", *warnings, *notes, ""]
    return "\n".join(lines)


RECORD_FILES = ("result.json", "config.json", "metrics.jsonl")


def copy_records(runs_dir: Path, run_dirs: dict[str, Path]) -> int:
    """Copy each used run's record files to runs_dir/<run name>/ (episodes gzipped); return the file count.

    Each file is written under a temporary name and renamed, so a copy is whole or absent."""
    count = 0
    for name, source in run_dirs.items():
        target = runs_dir / name
        target.mkdir(parents=True, exist_ok=True)
        pairs = [(source / f, target / f, False) for f in RECORD_FILES if (source / f).exists()]
        # the episode files the analysis reads, gzipped: about 1 MB each as text, a tenth compressed
        pairs += [(source / f, target / f"{f}.gz", True) for f in EPISODE_FILES.values() if (source / f).exists()]
        for src, dst, compress in pairs:
            data = src.read_bytes()
            write_atomic(dst, gzip.compress(data, mtime=0) if compress else data)
            count += 1
    return count


def summarize(sweep_dirs: Sequence[str | Path], out_dir: str | Path | None = None,
              names: dict[str, str] | None = None, ignore_keys: Sequence[str] = (),
              where: dict[str, str] | None = None, records: bool = False) -> str:
    """Write tables, plots, runs.csv, curves.csv and report.md; return the main and comparison
    tables and file places.

    With records, also copy each used run's record files (result, config, metrics, evaluation
    episodes gzipped) to <out>/runs/<run name>/, so a committed results folder holds its evidence."""
    if not sweep_dirs:
        raise ValueError("give at least one sweep folder")
    out = Path(out_dir) if out_dir is not None else Path(sweep_dirs[0]) / "analysis"
    collection = collect(sweep_dirs, names=names, ignore_keys=ignore_keys, where=where, skip=[out])
    out.mkdir(parents=True, exist_ok=True)
    if collection.runs.empty:
        write_atomic(out / "report.md", render_report(collection, sweep_dirs, []))
        raise ValueError(f"no complete run below {', '.join(map(str, sweep_dirs))}; "
                         f"{len(collection.excluded)} left out, reasons in {out / 'report.md'}:\n"
                         + "\n".join(_excluded_lines(collection)))
    tables, skipped = build_tables(collection.runs, collection.curves, collection.games)
    write_tables(tables, out / "tables")
    comparison = next((t.stats for t in tables if t.name == "comparison"), None)
    _, skipped_plots = write_plots(collection.runs, collection.curves, out / "plots", comparison)
    write_atomic(out / "runs.csv", collection.runs.drop(columns=["run_dir"]).to_csv(index=False))
    write_atomic(out / "curves.csv", collection.curves.to_csv(index=False))
    write_atomic(out / "report.md", render_report(collection, sweep_dirs, skipped + skipped_plots))

    copied = copy_records(out / "runs", dict(zip(collection.runs["run"], map(Path, collection.runs["run_dir"]),
                                                 strict=True))) if records else 0

    text = [to_markdown(t) for t in tables if t.name in ("main", "comparison")]
    if collection.excluded:
        text += [f"Left out {len(collection.excluded)} run(s):", *_excluded_lines(collection), ""]
    text.append(f"Tables ({', '.join(t.name for t in tables)}; .md .tex .csv) in {out / 'tables'}, "
                f"plots (.png .pdf) in {out / 'plots'}, report in {out / 'report.md'}, "
                f"per-run numbers in {out / 'runs.csv'}, training curves in {out / 'curves.csv'}"
                + (f", {copied} run record files in {out / 'runs'}." if records else "."))
    return "\n".join(text)
