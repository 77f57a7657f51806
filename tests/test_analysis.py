"""analysis/: tables, report and plots from hand-written run records with numbers worked out by hand.

The main sweep (valid_seen 30 games, valid_unseen 10 games, so All = 0.75 seen + 0.25 unseen):

| method | seen per seed | unseen per seed | All per seed | table row |
| opd | .48 .56 .64 | .4 .5 .6 | .46 .545 .63 | 56.0 ± 8.0, 50.0 ± 10.0, 54.5 ± 8.5, +0.0 |
| sage | .6 .6 .6 | .5 .6 .7 | .575 .6 .625 | 60.0 ± 0.0, 60.0 ± 10.0, 60.0 ± 2.5, +20.0 |
| no_gate | .56 .6 .64 | .5 .5 .5 | .545 .575 .605 | 60.0 ± 4.0, 50.0 ± 0.0, 57.5 ± 3.0, +0.0 |
| sft | .3 (seed 0 only) | .2 | .275 | 30.0, 20.0, 27.5, -60.0 (seed 1 failed, 2 incomplete) |
| oracle_gate | .8 x3 | .7 x3 | .775 x3 | 77.5 ± 0.0 in All; not verifier-free, never bold |

Relative improvement on unseen: 100 (60 - 50) / 50 = +20.0 for sage; 100 (20 - 50) / 50 = -60.0.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from analysis import collect, summarize
from analysis.__main__ import main as cli_main
from analysis.collect import TASK_TYPES
from analysis.tables import ablation_table, build_tables, main_table, to_latex, to_markdown

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
TASK_GAMES = {"valid_seen": [5, 5, 5, 5, 5, 5], "valid_unseen": [2, 2, 2, 2, 1, 1]}
SAGE_FAMILY = {"sage", "no_conf", "no_norm", "oracle_gate"}


def split_block(success: float, games: int, split: str, pick: float | None = None,
                repeated: float = 0.3, invalid: float = 0.1, turns: float = 20.0) -> dict:
    """One eval split; every task type has the split's success except Pick (if `pick` is given)."""
    per_task = {task: {"num_games": n, "success": pick if (pick is not None and task == "pick_and_place_simple")
                       else success} for task, n in zip(TASK_TYPES, TASK_GAMES[split], strict=True)}
    return {"num_games": games, "success": success, "success_per_seed": [success],
            "per_task_type": per_task, "mean_turns": turns, "invalid_action_rate": invalid,
            "repeated_action_rate": repeated}


def write_run(folder: Path, method: str, seed: int, seen: float | None, unseen: float | None,
              status: str | None = "complete", experiment: str = "unit", extra_config: dict | None = None,
              steps: int = 40, seen_eval: dict | None = None, unseen_eval: dict | None = None) -> Path:
    """A run directory as the harness writes it; status None leaves result.json out (incomplete)."""
    folder.mkdir(parents=True)
    config = {"method": {"name": method}, "seed": seed, "experiment": experiment,
              "env": {"name": "alfworld_synth", "seed": seed}, "train": {"steps": steps, "lr": 3e-4},
              "output_dir": str(folder)}
    for key, value in (extra_config or {}).items():
        section, _, leaf = key.rpartition(".")
        (config.setdefault(section, {}) if section else config)[leaf] = value
    (folder / "config.json").write_text(json.dumps(config))
    lines = []
    for step in range(steps):
        line = {"step": step, "loss": 2.0 - 0.03 * step + 0.1 * seed,
                "rollout_success": min(1.0, 0.2 + 0.015 * step + 0.05 * seed),
                "repeated_action_rate": max(0.0, 0.4 - 0.005 * step), "invalid_action_rate": 0.1}
        skip = min(0.6, 0.1 + 0.01 * step) if method in SAGE_FAMILY else None
        line.update({"label_frac_skip": skip, "label_frac_weak": 0.3 if skip is not None else None,
                     "label_frac_strong": 0.7 - skip if skip is not None else None})
        times = {"rollout": 1.0 + seed, "scoring": 1.0, "update": 2.0} | ({"judge": 0.5} if skip is not None else {})
        line.update({f"time_{k}_s": v for k, v in times.items()}, time_step_s=sum(times.values()))
        lines.append(json.dumps(line))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if status is None:
        return folder
    evaluation = {}
    if seen is not None:
        evaluation["valid_seen"] = split_block(seen, 30, "valid_seen", **(seen_eval or {}))
    if unseen is not None:
        evaluation["valid_unseen"] = split_block(unseen, 10, "valid_unseen", **(unseen_eval or {}))
    result = {"status": status, "error": "CUDA out of memory at step 12" if status == "failed" else None,
              "method": method, "seed": seed, "verifier_free": method != "oracle_gate",
              "wall_time_s": 600.0 + 60 * seed, "config": config,
              "versions": {"alfworld": "0.4.2", "torch": "2.13.0", "suite_hash": "abc123"},
              "eval": evaluation}
    (folder / "result.json").write_text(json.dumps(result))
    return folder


MAIN_RUNS = [  # (method, seed, seen, unseen, extra keyword arguments)
    ("opd", 0, 0.48, 0.4, {"seen_eval": {"pick": 0.2}, "unseen_eval": {"pick": 0.5}}),
    ("opd", 1, 0.56, 0.5, {"seen_eval": {"pick": 0.4}, "unseen_eval": {"pick": 0.5}}),
    ("opd", 2, 0.64, 0.6, {"seen_eval": {"pick": 0.6}, "unseen_eval": {"pick": 0.5}}),
    ("sage", 0, 0.6, 0.5, {"unseen_eval": {"repeated": 0.1, "turns": 10.0}}),
    ("sage", 1, 0.6, 0.6, {"unseen_eval": {"repeated": 0.2, "turns": 12.0}}),
    ("sage", 2, 0.6, 0.7, {"unseen_eval": {"repeated": 0.3, "turns": 14.0}}),
    ("no_gate", 0, 0.56, 0.5, {}), ("no_gate", 1, 0.6, 0.5, {}), ("no_gate", 2, 0.64, 0.5, {}),
    ("sft", 0, 0.3, 0.2, {}),
    ("oracle_gate", 0, 0.8, 0.7, {}), ("oracle_gate", 1, 0.8, 0.7, {}), ("oracle_gate", 2, 0.8, 0.7, {}),
]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A Hydra-like multirun folder with the runs of the module docstring, one failed, one incomplete."""
    root = tmp_path / "multirun" / "2026-11-25" / "12-00-00"
    for job, (method, seed, seen, unseen, kwargs) in enumerate(MAIN_RUNS):
        write_run(root / str(job), method, seed, seen, unseen, **kwargs)
    write_run(root / "13", "sft", 1, None, None, status="failed")
    write_run(root / "14", "sft", 2, None, None, status=None, steps=5)
    return root


def markdown_rows(markdown: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in markdown.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_main_table_every_cell(sweep: Path) -> None:
    runs = collect([sweep]).runs
    rows = markdown_rows(to_markdown(main_table(runs)))
    assert rows["Method"] == ["Seen", "Unseen", "All", "Rel. impr. vs OPD, unseen (%)", "Seeds"]
    assert rows["SFT"] == ["30.0", "20.0", "27.5", "-60.0", "1 ‡"]  # 1 seed: no ±, flagged
    assert rows["OPD"] == ["56.0 ± 8.0", "50.0 ± 10.0", "54.5 ± 8.5", "+0.0", "3"]
    assert rows["SAGE-OPD"] == ["**60.0 ± 0.0**", "**60.0 ± 10.0**", "**60.0 ± 2.5**", "**+20.0**", "3"]
    assert rows["w/o gating"] == ["**60.0 ± 4.0**", "50.0 ± 0.0", "57.5 ± 3.0", "+0.0", "3"]
    # Best in every column, but not verifier-free: marked, never bold.
    assert rows["Oracle gate†"] == ["80.0 ± 0.0", "70.0 ± 0.0", "77.5 ± 0.0", "+40.0", "3"]
    assert list(rows) == ["Method", "SFT", "OPD", "SAGE-OPD", "w/o gating", "Oracle gate†"]


def test_reference_rows_teacher_and_warm_start(sweep: Path) -> None:
    """A `mode=eval eval.eval_teacher=true` run records the warm-start student as its own eval and
    the teacher under `teacher_eval`: two reference rows, never bold, never flagged for seeds,
    without training curves; the methods' rows and bold are unchanged."""
    ref = write_run(sweep / "ref", "warm_start", 0, 0.2, 0.1, extra_config={"mode": "eval"})
    record = json.loads((ref / "result.json").read_text())
    record["teacher_eval"] = {"valid_seen": split_block(0.9, 30, "valid_seen"),
                              "valid_unseen": split_block(0.7, 10, "valid_unseen")}
    (ref / "result.json").write_text(json.dumps(record))
    (ref / "metrics.jsonl").unlink()  # an eval run trains nothing
    collection = collect([sweep])
    rows = markdown_rows(to_markdown(main_table(collection.runs)))
    # the eval run's wall time (its teacher row has none) counts once in the sweep's total: 600 s more
    cost = {t.name: t for t in build_tables(collection.runs, collection.curves)[0]}["cost"]
    assert "Sweep: 14 run folders, 2.53 h" in to_markdown(cost) and "Student warm start" not in to_markdown(cost)
    # teacher: All = (90 * 30 + 70 * 10) / 40 = 85.0; reference rows are context: no rel. impr. vs OPD
    assert rows["Teacher (reference)"] == ["90.0", "70.0", "85.0", "", "1"]
    assert rows["Student warm start"] == ["20.0", "10.0", "17.5", "", "1"]
    assert list(rows)[:3] == ["Method", "Teacher (reference)", "Student warm start"]
    assert rows["SAGE-OPD"][:3] == ["**60.0 ± 0.0**", "**60.0 ± 10.0**", "**60.0 ± 2.5**"]
    assert set(collection.curves["method"]) == {"opd", "sage", "no_gate", "sft", "oracle_gate"}
    assert not any("no metrics.jsonl" in n for n in collection.notes if "ref" in n and "teacher" in n)
    # report.md counts folders (the 15 of the fixture + ref), not its 16 rows; reference rows have no seeds
    summarize([sweep], sweep.parent / "out")
    report = (sweep.parent / "out" / "report.md").read_text()
    assert "Run folders found: 16; complete and used: 14; left out: 2." in report
    assert "SFT: 1 seed(s) [0], others have 3" in report
    assert "warm start: 1 seed" not in report and "Teacher (reference): 1 seed" not in report


def test_std_of_one_and_three_seeds_and_numbers_in_csv(sweep: Path) -> None:
    table = main_table(collect([sweep]).runs)
    stats = table.stats.set_index("method")
    assert stats.loc["sage", "valid_unseen_std"] == pytest.approx(10.0)  # sample std (ddof=1) of 50, 60, 70
    assert stats.loc["sage", "all_std"] == pytest.approx(2.5)
    assert stats.loc["opd", "all"] == pytest.approx(54.5)
    assert stats.loc["sft", "n_seeds"] == 1 and stats["valid_seen_std"].isna()["sft"]
    assert stats.loc["sage", "rel_impr_unseen"] == pytest.approx(20.0)
    assert stats.loc["sft", "rel_impr_unseen"] == pytest.approx(-60.0)
    markdown = to_markdown(table)
    assert "nan" not in markdown.lower() and "nan" not in to_latex(table).lower()


def test_relative_improvement_blank_without_opd_or_with_zero_opd(tmp_path: Path) -> None:
    write_run(tmp_path / "a" / "0", "sage", 0, 0.5, 0.5)
    write_run(tmp_path / "a" / "1", "sft", 0, 0.4, 0.3)
    rows = markdown_rows(to_markdown(main_table(collect([tmp_path / "a"]).runs)))
    assert rows["SAGE-OPD"][3] == "" and rows["SFT"][3] == ""
    write_run(tmp_path / "b" / "0", "sage", 0, 0.5, 0.5)
    write_run(tmp_path / "b" / "1", "opd", 0, 0.4, 0.0)
    rows = markdown_rows(to_markdown(main_table(collect([tmp_path / "b"]).runs)))
    assert rows["SAGE-OPD"][3] == "" and rows["OPD"][3] == ""


def test_latex_parses_with_bold_best_and_escapes(sweep: Path) -> None:
    latex = to_latex(main_table(collect([sweep]).runs))
    depth = 0
    for char in latex.replace("\\{", "").replace("\\}", ""):
        depth += {"{": 1, "}": -1}.get(char, 0)
        assert depth >= 0
    assert depth == 0
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\end{tabular}"):
        assert latex.count(rule) == 1
    body = latex.split("\\midrule")[1].split("\\bottomrule")[0]
    sage = next(line for line in body.splitlines() if line.startswith("SAGE-OPD"))
    assert sage == ("SAGE-OPD & \\textbf{60.0 $\\pm$ 0.0} & \\textbf{60.0 $\\pm$ 10.0} & "
                    "\\textbf{60.0 $\\pm$ 2.5} & \\textbf{+20.0} & 3 \\\\")
    assert "Oracle gate$^\\dagger$ & 80.0 $\\pm$ 0.0 &" in body
    assert all(line.count("&") == 5 for line in body.strip().splitlines())
    assert "\\_" in latex and "SR\\_OPD" in latex  # underscores escaped, none bare outside math
    assert "_" not in latex.replace("\\_", "")


def test_failed_and_incomplete_runs_reported_not_averaged(sweep: Path, tmp_path: Path) -> None:
    text = summarize([sweep], tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    for where in (text, report):
        assert "13 (method sft, seed 1): failed: CUDA out of memory at step 12" in where
        assert "14 (method sft, seed 2): incomplete: no result.json" in where
    assert "last logged step 4" in report
    assert "Run folders found: 15; complete and used: 13; left out: 2." in report
    assert "SFT: 1 seed(s) [0], others have 3" in report
    assert "‡ Fewer seeds" in text and "† Not verifier-free" in text
    assert markdown_rows(text)["SFT"][0] == "30.0"  # the failed seeds did not enter the mean


def test_unreadable_result_and_out_of_range_success_are_reported(tmp_path: Path) -> None:
    write_run(tmp_path / "s" / "0", "opd", 0, 0.5, 0.5)
    bad = write_run(tmp_path / "s" / "1", "opd", 1, 0.5, 0.5)
    (bad / "result.json").write_text('{"status": "complete", "eval": ')
    percent = write_run(tmp_path / "s" / "2", "opd", 2, 0.5, 0.5)
    record = json.loads((percent / "result.json").read_text())
    record["eval"]["valid_seen"]["success"] = 55.0
    (percent / "result.json").write_text(json.dumps(record))
    reasons = {e.run_dir: e.reason for e in collect([tmp_path / "s"]).excluded}
    assert reasons["s/1"].startswith("result.json unreadable (JSONDecodeError")
    assert "eval.valid_seen.success is 55.0; it must be a fraction in [0, 1]" in reasons["s/2"]


def test_per_task_ablation_and_degeneracy_tables(sweep: Path) -> None:
    tables = {t.name: t for t in build_tables(collect([sweep]).runs)[0]}
    per_task = tables["per_task_type"].stats.set_index(["group", "method"])
    assert per_task.loc[("split=valid_seen", "opd"), "Pick"] == pytest.approx(40.0)
    assert per_task.loc[("split=valid_seen", "opd"), "Pick_std"] == pytest.approx(20.0)
    assert per_task.loc[("split=valid_unseen", "opd"), "Pick"] == pytest.approx(50.0)
    # Pooled Pick: (5 x .2 + 2 x .5) / 7 = 2/7, then 3/7, 4/7: mean 3/7, sample std 1/7.
    assert per_task.loc[("split=all", "opd"), "Pick"] == pytest.approx(300 / 7)
    assert per_task.loc[("split=all", "opd"), "Pick_std"] == pytest.approx(100 / 7)
    assert "42.9 ± 14.3" in to_markdown(tables["per_task_type"])

    rows = markdown_rows(to_markdown(tables["ablation"]))
    assert list(rows) == ["Method", "SAGE-OPD", "w/o gating"]
    assert rows["w/o gating"] == ["**60.0 ± 4.0**", "+0.0", "50.0 ± 0.0", "-10.0", "57.5 ± 3.0", "-2.5", "3"]
    assert rows["SAGE-OPD"][1] == "" and rows["SAGE-OPD"][2] == "**60.0 ± 10.0**"

    rows = markdown_rows(to_markdown(tables["degeneracy"]))
    unseen_repeated = rows["Method"].index("Unseen Repeated (%)")
    unseen_turns = rows["Method"].index("Unseen Turns")
    assert rows["SAGE-OPD"][unseen_repeated] == "**20.0 ± 10.0**"  # lowest is best
    assert rows["SAGE-OPD"][unseen_turns] == "**12.0 ± 2.0**"
    assert rows["OPD"][unseen_repeated] == "30.0 ± 0.0"


def test_cost_table_wall_time_and_step_split(sweep: Path) -> None:
    """Fixture times: rollout 1 + seed, scoring 1, update 2 (+ judge 0.5 for the SAGE family) s per
    step, 40 steps; wall time 600 + 60 seed s. OPD steps 4, 5, 6 s -> 5.0 ± 1.0; training
    40 x 4 / 60 = 2.67, 3.33, 4.00 min -> 3.3 ± 0.7; wall 10, 11, 12 min -> 11.0 ± 1.0. SAGE-OPD
    steps 4.5, 5.5, 6.5 -> 5.5 ± 1.0, training 3.00, 3.67, 4.33 -> 3.7 ± 0.7. Sweep: 13 complete
    runs, 4 x (600 + 660 + 720) + 600 = 8,520 s = 2.37 h."""
    collection = collect([sweep])
    tables = {t.name: t for t in build_tables(collection.runs, collection.curves)[0]}
    rows = markdown_rows(to_markdown(tables["cost"]))
    assert rows["Method"] == ["Wall (min)", "Training (min)", "Steps", "Step (s)", "Rollout (s)", "Judge (s)",
                              "Scoring (s)", "Update (s)", "Seeds"]
    assert rows["OPD"] == ["11.0 ± 1.0", "3.3 ± 0.7", "40.0 ± 0.0", "5.0 ± 1.0", "2.0 ± 1.0", "", "1.0 ± 0.0",
                           "2.0 ± 0.0", "3"]
    assert rows["SAGE-OPD"][:6] == ["11.0 ± 1.0", "3.7 ± 0.7", "40.0 ± 0.0", "5.5 ± 1.0", "2.0 ± 1.0", "0.5 ± 0.0"]
    assert rows["SFT"][:4] == ["10.0", "2.7", "40.0", "4.0"]  # seed 0 only: 1 failed, 1 incomplete
    assert "Sweep: 13 run folders, 2.37 h of wall time in all" in to_markdown(tables["cost"])
    # The rollout's split (time_generate_s, time_env_s) shows right after Rollout, never in the sum:
    # generate = rollout - 0.5 -> OPD 1.5 ± 1.0, env 0.5 ± 0.0.
    split = collection.curves.assign(time_generate_s=collection.curves["time_rollout_s"] - 0.5, time_env_s=0.5)
    rows = markdown_rows(to_markdown({t.name: t for t in build_tables(collection.runs, split)[0]}["cost"]))
    assert rows["Method"][3:7] == ["Step (s)", "Rollout (s)", "Generate (s)", "Env (s)"]
    assert rows["OPD"][3:8] == ["5.0 ± 1.0", "2.0 ± 1.0", "1.5 ± 1.0", "0.5 ± 0.0", ""]
    # Runs without step times (older records) leave the table out and say so.
    untimed = collection.curves.drop(columns=[c for c in collection.curves if c.startswith("time_")])
    tables, skipped = build_tables(collection.runs, untimed)
    assert "cost" not in {t.name for t in tables} and any("cost table left out" in s for s in skipped)


def write_episodes(path: Path, episodes: list[list[str]]) -> None:
    lines = "".join(json.dumps({"won": False, "turns": [{"action": a, "valid": True} for a in turns]}) + "\n"
                    for turns in episodes)
    path.write_bytes(gzip.compress(lines.encode()) if path.suffix == ".gz" else lines.encode())


def test_actions_table_counts_verbs_per_100_episodes(sweep: Path) -> None:
    """OPD seed s: two episodes, [go, use] and [go, take x s]: go 2/2 -> 100, use 1/2 -> 50, take
    0, 50, 100 -> 50 ± 50. The teacher's (gzipped, as --copy-records writes it): one episode
    [examine, Look]: other 200. close, move... are used by no agent: no column. Runs without
    episode files have no row."""
    for job, seed in ((0, 0), (1, 1), (2, 2)):  # the fixture's OPD runs
        write_episodes(sweep / str(job) / "eval_episodes.jsonl",
                       [["go to desk 1", "use desklamp 1"], ["go to bed 1", *["take pen 1 from bed 1"] * seed]])
    ref = write_run(sweep / "ref", "warm_start", 0, 0.2, 0.1, extra_config={"mode": "eval"})
    record = json.loads((ref / "result.json").read_text())
    record["teacher_eval"] = {"valid_seen": split_block(0.9, 30, "valid_seen"),
                              "valid_unseen": split_block(0.7, 10, "valid_unseen")}
    (ref / "result.json").write_text(json.dumps(record))
    write_episodes(ref / "eval_teacher_episodes.jsonl.gz", [["examine desk 1", "Look"]])
    (sweep / "1" / "eval_teacher_episodes.jsonl").write_text("not json\n")  # an OPD run: ignored
    collection = collect([sweep])
    tables = {t.name: t for t in build_tables(collection.runs, collection.curves)[0]}
    rows = markdown_rows(to_markdown(tables["actions"]))
    assert rows["Method"] == ["go", "take", "use", "other", "Seeds"]
    assert rows["OPD"] == ["100.0 ± 0.0", "50.0 ± 50.0", "50.0 ± 0.0", "0.0 ± 0.0", "3"]
    assert rows["Teacher (reference)"] == ["0.0", "0.0", "0.0", "200.0", "1"]
    assert set(rows) == {"Method", "OPD", "Teacher (reference)"}
    # a broken episodes file is named, not fatal
    write_episodes(ref / "eval_episodes.jsonl", [])
    (ref / "eval_episodes.jsonl").write_text("{broken\n")
    assert any("eval_episodes.jsonl: unreadable episodes" in n for n in collect([sweep]).notes)


def test_ablation_table_needs_sage_and_an_ablation(tmp_path: Path) -> None:
    write_run(tmp_path / "s" / "0", "sage", 0, 0.5, 0.5)
    write_run(tmp_path / "s" / "1", "opd", 0, 0.5, 0.5)
    assert ablation_table(collect([tmp_path / "s"]).runs) is None


def test_experiments_are_grouped_and_duplicates_reported(tmp_path: Path) -> None:
    for job, (method, seen) in enumerate([("opd", 0.5), ("sage", 0.6)]):
        write_run(tmp_path / "demo" / str(job), method, 0, seen, seen, experiment="demo")
        write_run(tmp_path / "paper" / str(job), method, 0, seen / 2, seen / 2, experiment="paper_cpu")
    # An alpha sweep of sage becomes method variants, not groups; a rerun is a duplicate.
    write_run(tmp_path / "paper" / "2", "sage", 0, 0.2, 0.2, experiment="paper_cpu",
              extra_config={"method.alpha": 0.3})
    write_run(tmp_path / "paper" / "3", "opd", 0, 0.1, 0.1, experiment="paper_cpu")
    collection = collect([tmp_path / "demo", tmp_path / "paper"])
    assert collection.group_keys == ["experiment"] and collection.variant_keys == ["method.alpha"]
    (duplicate,) = collection.excluded
    assert duplicate.run_dir in {"paper/0", "paper/3"} and "duplicate of paper/" in duplicate.reason
    markdown = to_markdown(main_table(collection.runs))
    assert "*experiment=demo*" in markdown and "*experiment=paper_cpu*" in markdown
    assert "SAGE-OPD (alpha=0.3)" in markdown and "SAGE-OPD (alpha=unset)" in markdown
    demo = markdown.split("*experiment=paper_cpu*")[0]
    assert markdown_rows(demo)["SAGE-OPD (alpha=unset)"][3] == "**+20.0**"  # vs the demo's OPD only
    only_demo = collect([tmp_path / "demo", tmp_path / "paper"], where={"experiment": "demo"})
    assert len(only_demo.runs) == 2 and only_demo.group_keys == []


def test_checkpoint_config_below_a_run_and_model_cache_are_not_runs(tmp_path: Path) -> None:
    run = write_run(tmp_path / "s" / "0", "opd", 0, 0.5, 0.5)
    (run / "checkpoint").mkdir()
    (run / "checkpoint" / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    (tmp_path / "s" / "cache" / "tiny").mkdir(parents=True)
    (tmp_path / "s" / "cache" / "tiny" / "config.json").write_text('{"model_type": "qwen2"}')
    collection = collect([tmp_path / "s"])
    assert list(collection.runs["run"]) == ["s/0"] and collection.excluded == []


def test_bad_inputs_give_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main([str(tmp_path / "empty")]) == 2
    assert "no run records found" in capsys.readouterr().err
    write_run(tmp_path / "failed" / "0", "opd", 0, None, None, status="failed")
    assert cli_main([str(tmp_path / "failed")]) == 2
    assert "failed: CUDA out of memory" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--names takes KEY=VALUE"):
        cli_main([str(tmp_path / "failed"), "--names", "sage"])


def assert_real_image(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 15_000, (path, len(data))
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert pixels[..., :3].std() > 0.05  # not one flat colour


def test_cli_writes_tables_plots_and_prints_main_table(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main([str(sweep), "--names", "sage=SAGE", "my_method=Mine"]) == 0
    printed = capsys.readouterr().out
    assert "| SAGE | **60.0 ± 0.0** |" in printed and str(sweep / "analysis" / "tables") in printed
    out = sweep / "analysis"
    for name in ("main", "per_task_type", "ablation", "degeneracy", "cost"):
        for suffix in (".md", ".tex", ".csv"):
            assert (out / "tables" / f"{name}{suffix}").stat().st_size > 200
    for name in ("success", "curves", "judge_labels", "task_types"):
        assert_real_image(out / "plots" / f"{name}.png")
        assert (out / "plots" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    header = (out / "tables" / "main.csv").read_text().splitlines()[0]
    assert header.startswith("group,method,label,verifier_free,n_seeds,valid_seen,valid_seen_std")
    assert (out / "runs.csv").read_text().count("\n") == 14  # header + 13 complete runs
    assert cli_main([str(sweep)]) == 0  # a second pass does not take its own output for runs
    assert "left out: 2." in (out / "report.md").read_text()


def test_copy_records_puts_each_used_runs_evidence_beside_the_tables(
        sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    episodes = '{"game": "g1", "won": true, "actions": ["go to desk 1"]}\n' * 50
    (sweep / "0" / "eval_episodes.jsonl").write_text(episodes)
    out = tmp_path / "results"
    assert cli_main([str(sweep), "--out", str(out), "--copy-records"]) == 0
    # 13 complete runs x (result, config, metrics) + one episodes file = 40; the failed and the
    # incomplete sft runs are not used, so not copied
    assert f"40 run record files in {out / 'runs'}" in capsys.readouterr().out
    # named as in report.md and runs.csv: the path below the sweep folder's parent
    copies = out / "runs" / sweep.name
    assert sorted(p.name for p in copies.iterdir()) == sorted(str(j) for j in range(13))
    assert len([p for p in (out / "runs").rglob("*") if p.is_file()]) == 40
    assert (copies / "0" / "result.json").read_bytes() == (sweep / "0" / "result.json").read_bytes()
    assert gzip.decompress((copies / "0" / "eval_episodes.jsonl.gz").read_bytes()).decode() == episodes
    assert not list(out.rglob("*.tmp"))  # every file written under a temporary name, then renamed
    # the copies are runs themselves: analysing them gives the same main table
    again = collect([out / "runs"]).runs
    assert markdown_rows(to_markdown(main_table(again))) == markdown_rows(to_markdown(main_table(collect([sweep]).runs)))


def test_fixture_records_on_disk(tmp_path: Path) -> None:
    collection = collect([FIXTURES])
    assert list(collection.runs["method"]) == ["opd", "sage"]
    assert {e.run_dir: e.reason.split(":")[0] for e in collection.excluded} == {
        "runs/example_sweep/2": "failed", "runs/example_sweep/3": "incomplete"}
    sage = collection.runs.set_index("method").loc["sage"]
    assert sage["valid_seen.success"] == 0.55 and sage["all.success"] == pytest.approx((140 * 0.55 + 134 * 0.5) / 274)
    assert len(collection.curves[collection.curves["method"] == "sage"]) == 3  # step 1 logged twice: last wins
    assert summarize([FIXTURES], tmp_path / "out").startswith("**Main results")


def test_analysis_does_not_import_torch() -> None:
    code = "import sys, analysis, analysis.plots, analysis.tables; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
