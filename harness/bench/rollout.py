"""Rollout figures from one run: env-steps/s with one batched generate over N envs per turn
against the same rollouts one env at a time.

    python -m harness.bench.rollout [--envs 32] [--turns 10] [--layout full] [--model PATH] [--no-admissible]

Both modes play the same games with the same model, greedy, so they generate the same tokens
(the run checks that the actions agree). Without --model the model is the tiny default
student's architecture with random weights and a word-level tokenizer built from the games'
text: speed depends on sizes, not on what the weights learned. The envs are the real engine
in `--workers` worker processes; games are loaded once before timing (the pool caches them).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from harness.agent.prompt import PromptSettings, render_window_messages
from harness.agent.rollout import RolloutSettings, rollout
from harness.envs import EnvPool, discover_games


def _tiny_student(pool: EnvPool, games, prompt: PromptSettings):
    from harness.default.tiny import STUDENT_SPEC, build_tiny_model, build_tokenizer

    states = pool.reset([g.gamefile for g in games])
    corpus = [render_window_messages(s.task, [], s.text, s.admissible, prompt)[-1]["content"] for s in states]
    tokenizer = build_tokenizer(corpus)
    return build_tiny_model(STUDENT_SPEC, tokenizer, seed=0), tokenizer


def _timed(model, tokenizer, pool, batches, settings, prompt) -> tuple[list, float, dict]:
    timings: dict[str, float] = {}
    trajectories = []
    start = time.perf_counter()
    for games in batches:
        trajectories += rollout(model, tokenizer, pool, games, settings, prompt, timings=timings)
    return trajectories, time.perf_counter() - start, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None, help="games folder (default: a generated suite)")
    parser.add_argument("--envs", type=int, default=32)
    parser.add_argument("--single-envs", type=int, default=8,
                        help="envs played one at a time for the baseline (a subset keeps the run short)")
    parser.add_argument("--turns", type=int, default=10, help="env step cap per episode")
    parser.add_argument("--layout", default="full", choices=["full", "window"])
    parser.add_argument("--max-new-tokens", type=int, default=8, help="about the length of an action")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default=None, help="model path or id (default: random tiny student)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (2 cores are shared with env workers)")
    parser.add_argument("--no-admissible", action="store_true", help="prompts without the admissible list (model=tiny)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.data_root is None:
        from harness.envs.generate import SuiteSpec, ensure_suite

        args.data_root = ensure_suite(SuiteSpec(seed=0, n_train=max(args.envs, 6), n_valid_seen=6, n_valid_unseen=6))
    games = discover_games(args.data_root, "train").games[: args.envs]
    if len(games) < args.envs:
        raise SystemExit(f"only {len(games)} train games under {args.data_root}; pass fewer --envs or more games")
    prompt = PromptSettings(show_admissible=not args.no_admissible)
    settings = RolloutSettings(layout=args.layout, greedy=True, max_new_tokens=args.max_new_tokens)
    with EnvPool(num_workers=args.workers, max_steps=args.turns) as pool:
        if args.model:
            from harness.models import load_model, load_tokenizer

            model, tokenizer = load_model(args.model), load_tokenizer(args.model)
        else:
            model, tokenizer = _tiny_student(pool, games, prompt)
        params = sum(p.numel() for p in model.parameters())
        print(f"model: {args.model or 'tiny student (random weights)'}, {params / 1e6:.1f}M params, "
              f"{torch.get_num_threads()} torch thread(s); {args.workers} env workers; layout {args.layout}; "
              f"{args.turns} turns; max_new_tokens {args.max_new_tokens}")
        # warm-up: imports, game loading in the workers, first generate
        rollout(model, tokenizer, pool, games, RolloutSettings(greedy=True, max_new_tokens=2, max_turns=1), prompt)

        batched, batched_s, batched_t = _timed(model, tokenizer, pool, [games], settings, prompt)
        if args.layout == "full":
            no_reuse = _timed(model, tokenizer, pool, [games], replace(settings, reuse_cache=False), prompt)
            dynamic = _timed(model, tokenizer, pool, [games], replace(settings, growing_cache=False), prompt)
        single_games = games[: args.single_envs]
        single, single_s, single_t = _timed(model, tokenizer, pool, [[g] for g in single_games], settings, prompt)

    def report(name, trajectories, seconds, timings, n_envs):
        steps = sum(t.num_turns for t in trajectories)
        tokens = sum(len(turn.response_ids) for t in trajectories for turn in t.turns)
        print(f"{name:26s} {steps:4d} env steps in {seconds:6.1f} s = {steps / seconds:6.2f} env-steps/s "
              f"| per env-step: generate {1000 * timings['generate'] / steps:5.1f} ms, env "
              f"{1000 * timings['env'] / steps:5.1f} ms, prompt {1000 * timings['prompt'] / steps:4.1f} ms "
              f"| {tokens / steps:.1f} tokens/step")
        return steps / seconds, timings["generate"] / steps, timings["env"] / steps

    print()
    fast = report(f"batched ({args.envs} envs)", batched, batched_s, batched_t, args.envs)
    if args.layout == "full":
        report("  same, no KV cache reuse", *no_reuse, args.envs)
        slow_cache = report("  same, transformers' DynamicCache", *dynamic, args.envs)
        print(f"{'':26s} generate per env-step: growing cache {fast[1] / slow_cache[1]:.2f}x the time of DynamicCache")
    slow = report(f"one env at a time ({len(single_games)})", single, single_s, single_t, len(single_games))
    same = all([x.action for x in a.turns] == [x.action for x in b.turns] for a, b in zip(batched, single, strict=False))
    print(f"\nratio batched / one at a time: {fast[0] / slow[0]:.2f}x env-steps/s "
          f"(model side alone: {slow[1] / fast[1]:.1f}x less generate time per env-step; "
          f"env side: {slow[2] / fast[2]:.1f}x)")
    print(f"batched and one-at-a-time actions agree on the {len(single_games)} shared games: {same}")


if __name__ == "__main__":
    main()
