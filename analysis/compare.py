"""Is a method's difference to OPD more than noise? A paired, two-level bootstrap over games and seeds.

Every method is evaluated on the same games, so the comparison pairs them game by game. One
bootstrap replicate draws the games with replacement (the same draw for both methods: paired),
then, for each method separately, its seeds with replacement, and takes the difference of the two
mean success rates. The 2.5 and 97.5 percentiles of 4,000 replicates give a 95% interval that
holds both sources of noise: which games were drawn for the evaluation, and which seeds were run.
With one seed a method's seed noise cannot be seen, and its interval is too narrow.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

REPLICATES = 4000
BASELINE = "opd"
BASELINE_NAMES = {"opd": "OPD", "warm_start": "the warm-start student"}


def _outcomes(games: pd.DataFrame) -> pd.DataFrame:
    """Seeds x (split, game) success (0..1) of one row's runs."""
    return games.pivot_table(index="seed", columns=["split", "game"], values="won")


def _replicates(matrix: np.ndarray, game_draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mean success per replicate: the drawn games' means per seed, then a draw of the seeds."""
    per_seed = matrix[:, game_draws].mean(axis=-1)  # seeds x replicates
    seeds = rng.integers(matrix.shape[0], size=(game_draws.shape[0], matrix.shape[0]))
    return per_seed[seeds, np.arange(game_draws.shape[0])[:, None]].mean(axis=1)


def paired_bootstrap(method: np.ndarray, baseline: np.ndarray, seed: int = 0,
                     replicates: int = REPLICATES) -> dict[str, float]:
    """Difference of mean success (points) of two seeds x games matrices over the same games:
    the estimate, the 95% interval, and the share of replicates above 0 (percent)."""
    if method.shape[1] != baseline.shape[1] or method.shape[1] == 0:
        raise ValueError("the two methods need the same games, at least one")
    rng = np.random.default_rng(seed)
    draws = rng.integers(method.shape[1], size=(replicates, method.shape[1]))
    delta = 100 * (_replicates(method, draws, rng) - _replicates(baseline, draws, rng))
    low, high = np.percentile(delta, [2.5, 97.5])
    return {"delta": 100 * (method.mean() - baseline.mean()), "low": float(low), "high": float(high),
            "p_above": 100 * float((delta > 0).mean())}


def comparison_stats(runs: pd.DataFrame, games: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (group, method row) with evaluation episodes, beside the group's baseline row
    (a method, or a reference row such as `warm_start`): delta / low / high for unseen and all
    games, and p_above for all games. Reference rows are never compared. Empty if none."""
    keys = ["group", "order", "label", "method", "verifier_free", "reference"]
    if games.empty:
        return pd.DataFrame()
    out = []
    rows_all = runs.groupby(keys, sort=True, dropna=False).size().rename("n_seeds").reset_index()
    for _, rows in rows_all.groupby("group", sort=False):
        base = rows[rows["method"] == baseline]
        if len(base) != 1:
            continue
        base_label = base["label"].iloc[0]
        base_games = games[(games["label"] == base_label) & (games["group"] == base["group"].iloc[0])]
        for _, row in rows[(rows["method"] != baseline) & ~rows["reference"]].iterrows():
            own = games[(games["label"] == row["label"]) & (games["group"] == row["group"])]
            if own.empty or base_games.empty:
                continue
            own_table, base_table = _outcomes(own), _outcomes(base_games)
            common = own_table.columns.intersection(base_table.columns)
            # a game counts only where every seed of both rows played it
            common = [k for k in common if own_table[k].notna().all() and base_table[k].notna().all()]
            found = {**row.to_dict(), "n_seeds": len(own_table)}  # the seeds with episodes
            for name, split in (("unseen", "valid_unseen"), ("all", None)):
                picked = sorted(k for k in common if split is None or k[0] == split)
                if not picked:
                    found.update({f"{name}_delta": math.nan, f"{name}_low": math.nan, f"{name}_high": math.nan})
                    continue
                result = paired_bootstrap(own_table[picked].to_numpy(dtype=float),
                                          base_table[picked].to_numpy(dtype=float))
                found.update({f"{name}_{k}": v for k, v in result.items() if k != "p_above"})
                if split is None:
                    found["p_above"] = result["p_above"]
                    found["games"] = len(picked)
            out.append(found)
    return pd.DataFrame(out)
