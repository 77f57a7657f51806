"""A training step's speed-up from one run: the default pair's `opd` (or any method's) step with
every exact speed-up of the harness against the same step without them, in one process.

    python -m harness.bench.step [--method opd] [--steps 4] [--experiment paper_cpu]

`without` is the step as it was before the speed work: the unpatched engine (env.fast_engine
false, nothing kept on disk), the next step's games preloaded at the workers' own priority, and
scoring and judging with the padding mask over a whole micro-batch per forward. `with` is the
default config. Both train their own copy of the same student on the same games, one step of
each in turn (so the machine's load falls on both alike), each with its own env workers; the
first step of each warms up and is not counted. Both compute the same loss (scoring within fp
rounding; the engine byte for byte), which the run checks on the first step.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
from contextlib import nullcontext
from unittest import mock

PHASES = ("rollout", "generate", "env", "scoring", "judge", "update", "step")


def _pool(cfg, method, fast: bool):
    from harness.cache import cache_root
    from harness.envs import EnvPool

    before = {} if fast else {"preload_nice": os.nice(0)}  # at the workers' own priority
    return EnvPool(num_workers=cfg.env.num_workers, max_steps=cfg.env.max_steps, environment=cfg.env.name,
                   with_plan=method.gate == "oracle", fast_engine=fast,
                   engine_cache_dir=cache_root(cfg.cache_dir) / "engine" if fast and cfg.env.engine_disk_cache else None,
                   **before)


def compare_steps(cfg, steps: int, log=print) -> dict:
    """Train `cfg`'s method for 1 + `steps` steps on each side (module docstring), one step of each
    in turn; returns {"means": {side: {phase: s}}, "losses": {side: [per step]}, "info": ...}."""
    import methods
    from harness import run as harness_run
    from harness.loop import scoring
    from harness.loop.train import Models, games_for_step, make_optimizer, train_step

    method = methods.get(cfg.method.name, **harness_run._method_knobs(cfg))
    root, _ = harness_run.data_root(cfg)
    games, _ = harness_run.discover_splits(cfg, root, log)
    models, info = harness_run.load_models(cfg, root, log)
    prompt = harness_run.prompt_settings(cfg)
    judge = harness_run.make_judge(cfg) if method.needs_judge else None
    old_cfg = copy.deepcopy(cfg)
    old_cfg.train.scoring_tokens = None
    sides = {}
    for name, side_cfg, fast in (("without", old_cfg, False), ("with", cfg, True)):
        student = copy.deepcopy(models.student).train()
        optimizer, scheduler = make_optimizer(student, side_cfg.train)
        sides[name] = {"cfg": side_cfg, "models": Models(student, models.teacher, models.tokenizer, models.keep_vocab),
                       "optimizer": optimizer, "scheduler": scheduler, "pool": _pool(side_cfg, method, fast),
                       "lines": []}
    total = steps + 1
    try:
        for step in range(total):
            step_games = games_for_step(games, step, cfg.train.envs_per_step, cfg.seed)[0]
            next_games = games_for_step(games, step + 1, cfg.train.envs_per_step, cfg.seed)[0] if step + 1 < total else None
            for name, side in sides.items():
                masked = mock.patch.object(scoring, "_right_padded", lambda attention: False) if name == "without" \
                    else nullcontext()  # the padding mask over the whole micro-batch, as before
                with masked:
                    line = train_step(step, side["cfg"], side["models"], method, step_games, side["pool"],
                                      side["optimizer"], side["scheduler"], judge, prompt, next_games=next_games)
                side["lines"].append(line)
                log(f"step {step} {name:8s} {line['time_step_s']:6.2f} s  loss {line.get('loss', 0.0):.6f}")
    finally:
        for side in sides.values():
            side["pool"].close()
    means = {name: {p: statistics.mean(line[f"time_{p}_s"] or 0.0 for line in side["lines"][1:]) for p in PHASES}
             for name, side in sides.items()}
    return {"means": means, "losses": {name: [line.get("loss") for line in side["lines"]] for name, side in sides.items()},
            "method": method.name, "info": info, "envs": cfg.train.envs_per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="opd")
    parser.add_argument("--experiment", default="paper_cpu")
    parser.add_argument("--steps", type=int, default=4, help="timed steps of each side (after one warm-up step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides (model=..., env.num_workers=...)")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    from hydra import compose, initialize_config_dir

    from harness import run as harness_run
    from harness.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(harness_run.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={args.experiment}", f"method={args.method}",
                                                       f"seed={args.seed}", *args.overrides])
    r = compare_steps(cfg, args.steps, log=lambda line: print(line, flush=True))
    print(f"== {r['method']} step on {r['info']['student']} / {r['info']['teacher']}, {r['envs']} envs, "
          f"{args.steps} timed steps each (steps 1-{args.steps}), means in s ==")
    print(f"  {'':8s} " + " ".join(f"{p:>8s}" for p in PHASES))
    for name, means in r["means"].items():
        print(f"  {name:8s} " + " ".join(f"{means[p]:8.2f}" for p in PHASES))
    print(f"  first step's loss: {r['losses']['without'][0]:.6f} without, {r['losses']['with'][0]:.6f} with")
    print(f"step speed-up: {r['means']['without']['step'] / r['means']['with']['step']:.2f}x")


if __name__ == "__main__":
    main()
