"""Evaluation on valid_seen / valid_unseen: success, per task type, degeneracy metrics.

Usable alone on any checkpoint: `python -m harness mode=eval checkpoint=<run dir or model dir>`.
"""

from __future__ import annotations

from collections import defaultdict

from harness.agent.prompt import PromptSettings
from harness.agent.rollout import rollout
from harness.config import rollout_settings
from harness.envs import EnvPool, get_environment, interleave_task_types


def split_metrics(trajectories_per_seed: list[list]) -> dict:
    """Numbers of one split from its trajectories, one list per eval seed (same games in each)."""
    per_seed = [sum(t.won for t in ts) / len(ts) for ts in trajectories_per_seed]
    everything = [t for ts in trajectories_per_seed for t in ts]
    by_type: dict[str, list[bool]] = defaultdict(list)
    for t in everything:
        by_type[t.task_type].append(t.won)
    turns = sum(t.num_turns for t in everything)
    return {
        "num_games": len(trajectories_per_seed[0]),
        "success": sum(per_seed) / len(per_seed),
        "success_per_seed": per_seed,
        "per_task_type": {k: {"num_games": len(v) // len(per_seed), "success": sum(v) / len(v)}
                          for k, v in sorted(by_type.items())},
        "mean_turns": turns / len(everything),
        "invalid_action_rate": sum(t.invalid_actions for t in everything) / max(1, turns),
        "repeated_action_rate": sum(t.repeated_actions for t in everything) / max(1, turns),
        "failed_episodes": sum(1 for t in everything if t.failed),
    }


def episode_record(trajectory, seed: int) -> dict:
    """One evaluated episode as plain JSON: what the agent did and what the engine answered."""
    return {"gamefile": trajectory.gamefile, "task": trajectory.task, "task_type": trajectory.task_type,
            "seed": seed, "won": trajectory.won, "failed": trajectory.failed,
            "turns": [{"action": t.action, "feedback": t.feedback, "valid": t.parseable and t.admissible_action,
                       "repeated": t.repeated} for t in trajectory.turns]}


def evaluate(model, tokenizer, data_root, cfg, pool: EnvPool, prompt: PromptSettings, log=print,
             episodes_path=None) -> dict:
    """Play every eval game of every split once per eval seed; returns {split: metrics}.

    With `episodes_path`, every episode is also written there as JSONL (for reading failures)."""
    settings = rollout_settings(cfg, evaluation=True)
    results, records = {}, []
    for split in cfg.eval.splits:
        games = get_environment(cfg.env.name).discover(data_root, split, cfg.env.task_types, cfg.env.on_malformed).games
        if cfg.eval.max_games:
            games = _balanced(games, cfg.eval.max_games)
        runs = []
        for seed in cfg.eval.seeds:
            trajectories = []
            for k in range(0, len(games), cfg.eval.batch_envs):
                trajectories += rollout(model, tokenizer, pool, games[k:k + cfg.eval.batch_envs], settings, prompt,
                                        seed=seed)
            runs.append(trajectories)
            records += [dict(episode_record(t, seed), split=split) for t in trajectories]
        results[split] = split_metrics(runs)
        log(f"eval {split}: {100 * results[split]['success']:.1f}% of {len(games)} games")
    if episodes_path is not None:
        from harness.envs.demos import save_jsonl

        save_jsonl(records, episodes_path)
    return results


def _balanced(games: list, count: int) -> list:
    """A reduced eval set that keeps every task type: round-robin over types in path order."""
    return sorted(interleave_task_types(games)[:count], key=lambda g: g.gamefile)
