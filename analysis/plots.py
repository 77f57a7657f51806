"""Figures from the runs and curves DataFrames, each saved as PNG and PDF."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.collect import SPLITS, TASK_TYPES, col  # noqa: E402

SPLIT_NAMES = {"valid_seen": "Seen", "valid_unseen": "Unseen", "all": "All"}
LABELS = {"label_frac_skip": ("Skip", "#b0b0b0"), "label_frac_weak": ("Weak", "#f0a030"),
          "label_frac_strong": ("Strong", "#c03030")}


def _with_series(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str], dict[str, tuple]]:
    """Add a `series` column (method label, plus its group if any); return it with order and colours."""
    frame = frame.copy()
    frame["series"] = [f"{label} · {group}" if group else label
                       for label, group in zip(frame["label"], frame["group"], strict=True)]
    order = list(frame.sort_values(["group", "order", "label"])["series"].drop_duplicates())
    colours = sns.color_palette("colorblind", len(order))
    return frame, order, dict(zip(order, colours, strict=True))


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:  # under a temporary name, then renamed: never half a file
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix[1:])
        os.replace(tmp, path)
    plt.close(fig)
    return paths


def _smooth_window(curves: pd.DataFrame) -> int:
    # Per-step rollout success is over a few games only: average ~1/10 of the run (4 of 40 steps).
    return max(1, int(curves.groupby("run")["step"].count().median()) // 10)


def plot_success(runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Bars of mean success per split and method, sample-std error bars, one dot per seed."""
    runs, order, colours = _with_series(runs)
    splits = [s for s in (*SPLITS, "all") if col(s, "success") in runs]
    long = runs.melt(id_vars=["series", "seed"], value_vars=[col(s, "success") for s in splits],
                     var_name="split", value_name="success")
    long["split"] = long["split"].map(lambda c: SPLIT_NAMES[c.split(".")[0]])
    long["success"] *= 100
    fig, ax = plt.subplots(figsize=(3 + 0.9 * len(order) * len(splits) / 2, 4))
    sns.barplot(long, x="split", y="success", hue="series", hue_order=order, palette=colours,
                errorbar="sd", capsize=0.15, err_kws={"linewidth": 1.2}, ax=ax)
    sns.stripplot(long, x="split", y="success", hue="series", hue_order=order, dodge=True,
                  palette={s: "black" for s in order}, size=3, legend=False, ax=ax)
    ax.set(xlabel="", ylabel="Success rate (%)", ylim=(0, 100),
           title="ALFWorld success (mean ± sample std over seeds; dots = seeds)")
    ax.legend(title=None, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out_dir / "success")


def plot_curves(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Rollout success, reverse KL to the teacher, loss and repeated-action rate against step: mean
    over seeds with a ±std band."""
    metrics = [m for m in ("rollout_success", "kl_student_teacher", "loss", "repeated_action_rate")
               if m in curves and curves[m].notna().any()]
    if not metrics:
        return []
    curves, order, colours = _with_series(curves)
    window = _smooth_window(curves)
    curves = curves.sort_values(["run", "step"])
    for metric in metrics:
        curves[metric] = curves.groupby("run")[metric].transform(
            lambda v: v.astype(float).rolling(window, min_periods=1).mean())
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.6), squeeze=False)
    titles = {"rollout_success": "Rollout success", "loss": "Training loss",
              "kl_student_teacher": "Reverse KL to the teacher (nats/token)",
              "repeated_action_rate": "Repeated-action rate"}
    for number, (ax, metric) in enumerate(zip(axes[0], metrics, strict=True)):
        sns.lineplot(curves, x="step", y=metric, hue="series", hue_order=order, palette=colours,
                     errorbar="sd", ax=ax, legend=number == len(metrics) - 1)
        ax.set(title=titles[metric], ylabel="", xlabel="training step")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(title=None, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.suptitle("Training curves: mean over seeds, band ± std"
                 + (f", rolling mean over {window} steps" if window > 1 else ""), y=1.02)
    fig.tight_layout()
    return _save(fig, out_dir / "curves")


def plot_labels(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """For each SAGE-family method, the fraction of turns the judge labels Skip / Weak / Strong."""
    fractions = [c for c in LABELS if c in curves]
    if len(fractions) < len(LABELS):
        return []
    labelled = curves.dropna(subset=fractions, how="all")
    if labelled.empty:
        return []
    labelled, order, _ = _with_series(labelled)
    window = _smooth_window(labelled)
    fig, axes = plt.subplots(1, len(order), figsize=(3.8 * len(order), 3.2), sharey=True, squeeze=False)
    for ax, series in zip(axes[0], order, strict=True):
        mean = labelled[labelled["series"] == series].groupby("step")[fractions].mean()
        mean = mean.fillna(0).rolling(window, min_periods=1).mean()
        ax.stackplot(mean.index, mean.T.to_numpy(), labels=[LABELS[c][0] for c in fractions],
                     colors=[LABELS[c][1] for c in fractions], alpha=0.9)
        ax.set(title=series, xlabel="training step", ylim=(0, 1), xlim=(mean.index.min(), mean.index.max()))
    axes[0][0].set_ylabel("fraction of turns")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, reverse=True)
    fig.suptitle("Judge labels over training (mean over seeds"
                 + (f", rolling mean over {window} steps)" if window > 1 else ")"), y=1.03)
    return _save(fig, out_dir / "judge_labels")


def plot_task_heatmap(runs: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Mean success (%) per method and task type, one panel per split."""
    runs, order, _ = _with_series(runs)
    panels = []
    for split in SPLITS:
        columns = {col(split, "success", t): short for t, short in TASK_TYPES.items()
                   if col(split, "success", t) in runs}
        if columns:
            matrix = runs.groupby("series")[list(columns)].mean().mul(100).rename(columns=columns)
            panels.append((split, matrix.reindex(order)))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 0.45 * len(order) + 1.6),
                             sharey=True, squeeze=False)
    for number, (ax, (split, matrix)) in enumerate(zip(axes[0], panels, strict=True)):
        sns.heatmap(matrix, annot=True, fmt=".0f", vmin=0, vmax=100, cmap="YlGnBu", ax=ax,
                    cbar=number == len(panels) - 1, cbar_kws={"label": "success (%)"})
        ax.set(title=f"{SPLIT_NAMES[split]} (mean over seeds)", xlabel="", ylabel="")
    return _save(fig, out_dir / "task_types")


def plot_comparison(stats: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Each method's difference to OPD (points) with its 95% paired-bootstrap interval, unseen and all;
    `stats` is the comparison table's (`analysis.compare.comparison_stats`), so the bootstrap runs once."""
    if stats.empty:
        return []
    stats, order, _ = _with_series(stats)
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.55 * len(order)))
    for offset, (part, name, colour) in enumerate((("unseen", "Unseen", "#0072b2"), ("all", "All", "#d55e00"))):
        y = [order.index(s) + (offset - 0.5) * 0.3 for s in stats["series"]]
        delta = stats[f"{part}_delta"]
        ax.errorbar(delta, y, xerr=[delta - stats[f"{part}_low"], stats[f"{part}_high"] - delta], fmt="o",
                    color=colour, capsize=3, label=name)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set(xlabel="Success-rate difference to OPD (points)",
           title="Difference to OPD with 95% bootstrap intervals (games and seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return _save(fig, out_dir / "comparison")


def write_plots(runs: pd.DataFrame, curves: pd.DataFrame, out_dir: Path,
                comparison: pd.DataFrame | None = None) -> tuple[list[Path], list[str]]:
    """Every figure the data allow (`comparison`: the stats of the comparison with OPD); return the
    paths and a note for each figure left out."""
    paths, skipped = plot_success(runs, out_dir), []
    made = plot_comparison(comparison if comparison is not None else pd.DataFrame(), out_dir)
    paths += made
    if not made:
        skipped.append("plot comparison left out: it needs evaluation episodes of OPD and of another method")
    for name, make, data in (("curves", plot_curves, curves), ("judge_labels", plot_labels, curves),
                             ("task_types", plot_task_heatmap, runs)):
        made = make(data, out_dir) if not data.empty else []
        paths += made
        if not made:
            skipped.append(f"plot {name} left out: the runs hold no data for it")
    return paths, skipped
