"""How reliable the teacher is off its own distribution, from one run.

    python -m harness.bench.agreement [--games 60] [--per-episode 4] [--student-checkpoint DIR] [hydra overrides...]

Rolls out the student (greedy and at temperature 1) and the teacher (greedy and at temperature
1) on the first `--games` games of each evaluation split, labels every visited state with the
exploring expert (harness/default/dagger.py), and prints:
  - each rollout's success (so the teacher greedy vs at temperature 1);
  - on a seeded sample of the student's states: the teacher's and the student's agreement with
    the expert's next command (teacher-forced exact match = the greedy reply), per expert verb
    and per bucket of turn index (how far into an episode a model stays reliable);
  - in the states where the expert would `use` / `take` / `move`: the verb each model's greedy
    reply starts with (counts), which shows which skills a model loses;
  - the teacher's judge accuracy (Skip / Weak / Strong, argmax) on every turn of the student's
    rollouts, labelled against the expert's command there (judge_data.label_of): the turns
    SAGE's gate reads, beside the noisy-expert turns the prepare report measures.
Hydra overrides select the pair like `python -m harness` (default: the tiny default pair).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from dataclasses import replace

import torch

from harness.agent.trajectory import collate
from harness.config import rollout_settings
from harness.default.dagger import labelled_rollouts, state_sample
from harness.default.judge_data import judge_accuracy, policy_judge_examples
from harness.default.sft import action_accuracy
from harness.envs import EnvPool, discover_games, interleave_task_types

FOCUS_VERBS = ("use", "take", "move")
TURN_BUCKETS = ((0, 5), (5, 10), (10, 15), (15, 20), (20, 30))


def trained_turn(datum) -> int:
    """The turn index of a state datum's one trained reply (dagger._state_datum)."""
    return max(t for t, m in zip(datum.turn_index, datum.response_mask, strict=True) if m)


def by_turn(model, data, tokenizer, buckets=TURN_BUCKETS) -> dict[str, float]:
    """Exact-match agreement with the expert per bucket of turn index ("0-5": turns 0..4): a
    model trained on demonstrations of 5-20 turns may drift off in a long, failing episode."""
    result = {}
    for lo, hi in buckets:
        chunk = [d for d in data if lo <= trained_turn(d) < hi]
        if chunk:
            result[f"{lo}-{hi}"] = action_accuracy(model, chunk, tokenizer, tokenizer.pad_token_id)["all"]
            result[f"count_{lo}-{hi}"] = len(chunk)
    return result


@torch.no_grad()
def first_verbs(model, data, tokenizer, batch_size: int = 32) -> list[str]:
    """The first word of each datum's trained reply as the model's greedy choice (argmax of the
    first response token), e.g. 'take'."""
    verbs = []
    for start in range(0, len(data), batch_size):
        chunk = data[start:start + batch_size]
        batch = collate(chunk, tokenizer.pad_token_id)
        logits_B_T_V = model(input_ids=batch["tokens_B_T"], attention_mask=batch["attention_mask_B_T"]).logits
        for row, datum in enumerate(chunk):
            first = datum.response_mask.index(1)
            token = int(logits_B_T_V[row, first - 1].argmax())
            verbs.append((tokenizer.decode([token], skip_special_tokens=True).strip().split(" ") or ["?"])[0] or "<eot>")
    return verbs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=60, help="games per evaluation split (type-balanced)")
    parser.add_argument("--per-episode", type=int, default=4, help="student states sampled per episode")
    parser.add_argument("--student-checkpoint", default=None, help="a run dir or saved model: the student after training")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--student-only", action="store_true",
                        help="roll out the student only (the teacher's success is then not measured)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from harness import run as harness_run
    from harness.config import register_configs

    register_configs()
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(harness_run.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args.overrides)
    torch.manual_seed(0)
    root, _ = harness_run.data_root(cfg)
    models, _ = harness_run.load_models(cfg, root)
    if args.student_checkpoint:
        harness_run._load_for_eval(models, args.student_checkpoint)
    tokenizer, prompt = models.tokenizer, harness_run.prompt_settings(cfg)
    games = []
    for split in ("valid_seen", "valid_unseen"):
        games += interleave_task_types(discover_games(root, split).games)[: args.games]
    base = rollout_settings(cfg)
    modes = {"greedy": replace(base, greedy=True), "temperature 1": replace(base, greedy=False, temperature=1.0, top_p=1.0)}
    figures: dict = {"games": len(games), "success": {}, "agreement": {}, "focus": {}, "judge": {}}
    episodes = {}
    with EnvPool(num_workers=cfg.env.num_workers, max_steps=cfg.env.max_steps) as pool:
        roles = (("student", models.student),) if args.student_only else (("student", models.student),
                                                                           ("teacher", models.teacher))
        for role, model in roles:
            for mode, settings in modes.items():
                labelled = labelled_rollouts(model, tokenizer, pool, games, settings, prompt, seed=0, source=f"{role} {mode}")
                episodes[(role, mode)] = labelled
                figures["success"][f"{role} {mode}"] = sum(e.won for e in labelled) / max(1, len(labelled))
    print(f"\n== success on {len(games)} games ({args.games} per split) ==")
    for name, value in figures["success"].items():
        print(f"{name:24s} {100 * value:5.1f}%")

    for mode in modes:
        states = state_sample(episodes[("student", mode)], tokenizer, prompt, cfg.prompt.layout, args.per_episode)
        labels = [tokenizer.decode([t for t, m in zip(d.token_ids, d.response_mask, strict=True) if m],
                                   skip_special_tokens=True).split(" ")[0] for d in states]
        print(f"\n== on {len(states)} states of the student's {mode} rollouts: agreement with the expert ==")
        for role, model in (("teacher", models.teacher), ("student", models.student)):
            accuracy = action_accuracy(model, states, tokenizer, tokenizer.pad_token_id)
            figures["agreement"][f"{role} on student {mode}"] = accuracy
            print(f"{role:8s} " + "  ".join(f"{k} {100 * v:.0f}%" for k, v in accuracy.items()))
            turns = by_turn(model, states, tokenizer)
            figures.setdefault("by_turn", {})[f"{role} on student {mode}"] = turns
            print("    by turn: " + "  ".join(f"{k} {100 * v:.0f}% (n={turns['count_' + k]})"
                                          for k, v in turns.items() if not k.startswith("count_")))
            verbs = first_verbs(model, states, tokenizer)
            focus = defaultdict(Counter)
            for label, verb in zip(labels, verbs, strict=True):
                if label in FOCUS_VERBS:
                    focus[label][verb] += 1
            figures["focus"][f"{role} on student {mode}"] = {k: dict(v) for k, v in focus.items()}
            for label in FOCUS_VERBS:
                counts = focus.get(label, Counter())
                total = sum(counts.values())
                cells = ", ".join(f"{v} {100 * n / total:.0f}%" for v, n in counts.most_common(4)) if total else "-"
                print(f"    expert '{label}' (n={total}): {role} says {cells}")
        print(f"    (expert verbs in the sample: {dict(Counter(labels))})")
        judge_cfg = harness_run.judge_settings(cfg)
        judge = judge_accuracy(models.teacher, tokenizer,
                               policy_judge_examples(episodes[("student", mode)], tokenizer, judge_cfg), judge_cfg)
        figures["judge"][f"teacher on student {mode}"] = judge
        print(f"judge on every turn of the student's {mode} rollouts: all {100 * judge['all']:.0f}% (n={judge['count']}); "
              + ", ".join(f"{k} {100 * judge[k]:.0f}% (n={judge['count_' + k]})" for k in ("skip", "weak", "strong")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
