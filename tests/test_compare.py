"""analysis/compare.py: the paired bootstrap against OPD, with distributions worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis import collect, summarize
from analysis.compare import paired_bootstrap
from analysis.tables import build_tables, to_markdown
from tests.test_analysis import assert_real_image, markdown_rows, write_run

GAMES = [("valid_seen", "a"), ("valid_seen", "b"), ("valid_unseen", "c"), ("valid_unseen", "d")]


def test_certain_differences_have_zero_width_intervals() -> None:
    ones, zeros = np.ones((2, 4)), np.zeros((3, 4))
    assert paired_bootstrap(ones, zeros) == {"delta": 100.0, "low": 100.0, "high": 100.0, "p_above": 100.0}
    same = np.array([[1, 0, 1, 0], [1, 0, 1, 0]], dtype=float)  # every seed alike: the games decide
    assert paired_bootstrap(same, same) == {"delta": 0.0, "low": 0.0, "high": 0.0, "p_above": 0.0}
    # Seeds that differ are drawn for each method on its own (the runs are independent): the same
    # two seeds give a Δ of 0 only on average. Seeds (1, 0) vs (0, 1) on one game: -100, 0, +100.
    swapped = paired_bootstrap(np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]]))
    assert swapped["delta"] == 0.0 and swapped["low"] == -100.0 and swapped["high"] == 100.0


def test_the_games_are_paired() -> None:
    """Method wins game 0, OPD game 1. Paired: a draw of two games gives +100 (both game 0, 1/4),
    0 (one each, 1/2) or -100 (1/4): P(Δ > 0) = 25%. Unpaired it would be 31.25%."""
    result = paired_bootstrap(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))
    assert result["delta"] == 0.0 and result["low"] == -100.0 and result["high"] == 100.0
    assert result["p_above"] == pytest.approx(25.0, abs=2.5)  # 4,000 replicates: sd 0.7


def test_seeds_are_drawn_too() -> None:
    """One game; the method won it in 1 of 2 seeds, OPD never. The games draw changes nothing, the
    seed draw gives 0 (both seeds the loser, 1/4), 50 (1/2) or 100 (1/4): P(Δ > 0) = 75%."""
    result = paired_bootstrap(np.array([[1.0], [0.0]]), np.array([[0.0], [0.0]]))
    assert result["delta"] == 50.0 and result["low"] == 0.0 and result["high"] == 100.0
    assert result["p_above"] == pytest.approx(75.0, abs=2.5)
    again = paired_bootstrap(np.array([[1.0], [0.0]]), np.array([[0.0], [0.0]]))
    assert again == result  # rng seed 0: the same numbers every time


def test_different_games_are_an_error() -> None:
    with pytest.raises(ValueError, match="same games"):
        paired_bootstrap(np.ones((1, 3)), np.ones((1, 4)))


def episodes(run_dir: Path, won: set[str]) -> None:
    """The run's eval_episodes.jsonl: one episode per game of GAMES, won if the game is in `won`."""
    (run_dir / "eval_episodes.jsonl").write_text("".join(json.dumps({
        "gamefile": f"/cache/games/json_2.1.1/{split}/{game}-task/trial_1/game.tw-pddl", "split": split,
        "won": game in won, "turns": [{"action": "go to desk 1", "valid": True}]}) + "\n" for split, game in GAMES))


def test_comparison_table_from_run_folders(tmp_path: Path) -> None:
    """OPD (3 seeds) wins a; SAGE-OPD (3 seeds) wins a and c; no_conf has no episodes: no row.
    Unseen: SAGE wins c, not d: a draw of the 2 unseen games gives 0 (1/4), 50, 100 (1/4): Δ +50,
    interval [0, 100]. All: Δ = 25 x (c's draws among 4) ~ Binomial(4, 1/4): P(0) = 0.316, so the
    2.5th percentile is 0, P(Δ <= 50) = 0.949 < 0.975, so the 97.5th is 75; P(Δ > 0) = 68.4%."""
    root = tmp_path / "sweep"
    for seed in range(3):
        episodes(write_run(root / f"opd{seed}", "opd", seed, 0.5, 0.0), {"a"})
        episodes(write_run(root / f"sage{seed}", "sage", seed, 0.5, 0.5), {"a", "c"})
    write_run(root / "no_conf0", "no_conf", 0, 0.5, 0.5)
    collection = collect([root])
    assert len(collection.games) == 6 * 4
    tables = {t.name: t for t in build_tables(collection.runs, collection.curves, collection.games)[0]}
    table = to_markdown(tables["comparison"])
    rows = markdown_rows(table)
    assert rows["Method"] == ["Δ Unseen", "Unseen 95% low", "Unseen 95% high", "Δ All", "All 95% low",
                              "All 95% high", "P(Δ All > 0) (%)", "Seeds"]
    assert rows["SAGE-OPD"][:6] == ["+50.0", "+0.0", "+100.0", "+25.0", "+0.0", "+75.0"]
    assert float(rows["SAGE-OPD"][6]) == pytest.approx(68.4, abs=2.5)
    assert set(rows) == {"Method", "SAGE-OPD"} and "OPD (3 seed(s))" in table and "(4 in All)" in table
    # No warm-start episodes yet: no table against it. A `mode=eval` run that kept them (it won a, b):
    assert "comparison_warm_start" not in tables
    episodes(write_run(root / "reference", "warm_start", 0, 1.0, 0.0, extra_config={"mode": "eval"}), {"a", "b"})
    collection = collect([root])
    tables = {t.name: t for t in build_tables(collection.runs, collection.curves, collection.games)[0]}
    rows = markdown_rows(to_markdown(tables["comparison_warm_start"]))
    # OPD: a 0, b -1, c 0, d 0 -> Δ All -25 = -25 x Binomial(4, 1/4) draws of b: P(-75 or below) =
    # 0.051, so the 2.5th percentile is -75, the 97.5th 0; unseen: both lose c and d -> 0
    assert rows["OPD"][:6] == ["+0.0", "+0.0", "+0.0", "-25.0", "-75.0", "+0.0"]
    # SAGE-OPD: a 0, b -1, c +1, d 0 -> Δ All 0; unseen +50 in [0, 100]
    assert rows["SAGE-OPD"][:4] == ["+50.0", "+0.0", "+100.0", "+0.0"]
    assert set(rows) == {"Method", "OPD", "SAGE-OPD"}  # reference rows are baselines, never compared
    assert "Difference to the warm-start student" in to_markdown(tables["comparison_warm_start"])
    assert markdown_rows(to_markdown(tables["comparison"]))["SAGE-OPD"][:6] == [
        "+50.0", "+0.0", "+100.0", "+25.0", "+0.0", "+75.0"]  # the OPD comparison is unchanged by it
    printed = summarize([root], tmp_path / "out")  # what `python -m analysis` prints: both tables
    assert printed.index("**Main results") < printed.index("**Difference to OPD") < printed.index("Tables (")
    assert_real_image(tmp_path / "out" / "plots" / "comparison.png")  # the same numbers, as a forest plot
    # Without OPD's episodes there is nothing to compare with: the table is left out, with a note.
    games = collection.games[collection.games["method"] != "opd"]
    tables, skipped = build_tables(collection.runs, collection.curves, games)
    assert "comparison" not in {t.name for t in tables} and any("comparison table left out" in s for s in skipped)


def test_a_game_some_seed_did_not_play_is_left_out(tmp_path: Path) -> None:
    """OPD seed 1 lacks game d (its file lists a, b, c only): the comparison uses a, b, c."""
    root = tmp_path / "sweep"
    for seed in range(2):
        episodes(write_run(root / f"opd{seed}", "opd", seed, 0.5, 0.0), {"a"})
        episodes(write_run(root / f"sage{seed}", "sage", seed, 0.5, 0.5), {"a", "d"})
    write_run(root / "sage2", "sage", 2, 0.5, 0.5)  # no episodes kept: not in the comparison's seeds
    lines = (root / "opd1" / "eval_episodes.jsonl").read_text().splitlines()
    (root / "opd1" / "eval_episodes.jsonl").write_text("\n".join(lines[:3]) + "\n")
    collection = collect([root])
    table = {t.name: t for t in build_tables(collection.runs, collection.curves, collection.games)[0]}["comparison"]
    rows = markdown_rows(to_markdown(table))
    # a, b, c: both win a only -> Δ All 0; unseen is c alone, both lose -> 0
    assert rows["SAGE-OPD"] == ["+0.0"] * 6 + ["0.0", "2"] and "(3 in All)" in to_markdown(table)
