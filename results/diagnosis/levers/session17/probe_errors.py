"""Probe (session 17): what the teacher's own greedy mistakes are, on the first N games per split.

    python probe_errors.py 30 <hydra overrides selecting the pair>

Every turn where the teacher's command differs from the exploring expert's label is put in one
class: an invalid command (not admissible), by its shape against the admissible list (the right
verb and object kind but another instance / receptacle, an object not here, ...), or a valid
but different one (another place to go, a wrong object taken, ...). Prints counts per class and
verb, and a few examples of each.
"""
import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import replace

import torch

from harness import run as harness_run
from harness.config import register_configs, rollout_settings
from harness.default.dagger import labelled_rollouts
from harness.envs import EnvPool, discover_games, interleave_task_types
from harness.envs.experts import kind_of

register_configs()


def objects_of(command: str) -> list[str]:
    return re.findall(r"([a-z]+ \d+)", command)


def classify(cmd: str, label: str, admissible: list[str], observation: str) -> str:
    verb, lverb = cmd.split(" ")[0], label.split(" ")[0]
    if cmd in admissible:
        if verb != lverb:
            return f"valid, {verb} instead of {lverb}"
        if verb == "go":
            return "valid go, another place"
        return f"valid {verb}, other arguments"
    same_verb = [a for a in admissible if a.split(" ")[0] == verb]
    if not same_verb:
        return f"invalid {verb}: no {verb} possible here" + (f" (expert: {lverb})")
    objs = objects_of(cmd)
    kinds = [kind_of(o) for o in objs]
    for a in same_verb:
        ao = objects_of(a)
        if len(ao) == len(objs) and [kind_of(o) for o in ao] == kinds:
            return f"invalid {verb}: right kinds, wrong instance number"
    if objs and objs[0] not in observation:
        return f"invalid {verb}: object not in the last observation (expert: {lverb})"
    return f"invalid {verb}: other (expert: {lverb})"


def main():
    from hydra import compose, initialize_config_dir
    ngames, overrides = int(sys.argv[1]), sys.argv[2:]
    with initialize_config_dir(config_dir=str(harness_run.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    root, _ = harness_run.data_root(cfg)
    models, _ = harness_run.load_models(cfg, root)
    tok, prompt = models.tokenizer, harness_run.prompt_settings(cfg)
    games = []
    for split in ("valid_seen", "valid_unseen"):
        games += interleave_task_types(discover_games(root, split).games)[:ngames]
    settings = replace(rollout_settings(cfg), greedy=True)
    with EnvPool(num_workers=cfg.env.num_workers, max_steps=cfg.env.max_steps) as pool:
        eps = labelled_rollouts(models.teacher, tok, pool, games, settings, prompt, seed=0, source="teacher greedy")
    classes, examples, first_error = Counter(), defaultdict(list), Counter()
    turns = agree = 0
    for e in eps:
        seen_error = False
        for t, (cmd, label) in enumerate(zip(e.executed, e.labels, strict=True)):
            turns += 1
            if cmd == label:
                agree += 1
                continue
            c = classify(cmd, label, e.admissible[t], e.observations[t])
            classes[c] += 1
            if not seen_error and not e.won:
                first_error[c] += 1
                seen_error = True
            if len(examples[c]) < 3:
                examples[c].append({"task": e.task, "obs": e.observations[t][-300:], "teacher": cmd, "expert": label})
    print(f"games {len(eps)}, won {sum(e.won for e in eps)}, turns {turns}, agree {agree} ({100 * agree / turns:.0f}%)")
    print("\n== disagreements by class ==")
    for c, n in classes.most_common():
        print(f"{n:5d}  {c}")
    print("\n== the first disagreement of each lost game ==")
    for c, n in first_error.most_common():
        print(f"{n:5d}  {c}")
    json.dump({"classes": classes, "first_error": first_error, "examples": examples},
              open("probe_errors.out.json", "w"), indent=1)
    for c, ex in examples.items():
        print(f"\n-- {c}")
        for x in ex[:2]:
            print(json.dumps(x)[:700])


if __name__ == "__main__":
    main()
