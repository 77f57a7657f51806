"""Probe (session 17): does the teacher's take/go choice read the task's object and the list in view?

    python probe_reads_task.py <teacher dir> [more teacher dirs]

On every search decision of 200 held-out-and-train demonstrations (the expert's own states,
teacher-forced): the states where the expert takes the target (it is in view) and where it goes
on (it is not). For each, P(first token = take) as played, and with one edit of the last user
message: the task sentence names another object kind (one not in view), or the target is removed
from / put into the list in view, or another object put into it (the control) (harness/default/counterfactual.py's edits, without relabelling).
A policy that reads the task and the list moves P(take) a lot under every edit.
"""
import json
import random
import sys

import torch

from harness.agent.prompt import PromptSettings
from harness.default.counterfactual import listed_items, with_items
from harness.default.sft import demo_data
from harness.envs.experts import kind_of
from harness.models import load_model, load_tokenizer

CACHE = "/root/.cache/sage-opd/tiny"
demos = [json.loads(line) for line in open(f"{CACHE}/demos-610734a43890b940-v3.jsonl")][:200]
kinds = sorted({kind_of(c.split(" ")[1] + " 1") for e in demos for t in e["turns"] for c in t["admissible"] if c.startswith("take ")})
rng = random.Random(0)


def cases():
    """(episode prefix record, which) for search decisions: 'take' turns and 'go' turns at a listing."""
    for e in demos:
        taken = [t["action"] for t in e["turns"] if t["action"].startswith("take ")]
        if not taken:
            continue
        target = taken[0].split(" ")[1]
        for i, t in enumerate(e["turns"]):
            if i == 0 or listed_items(t["observation"]) is None:
                continue
            if t["action"] == taken[0]:
                yield e, i, target, "take"
                break
            if t["action"].startswith("go to "):
                yield e, i, target, "go"


def edited(e, i, target, how):
    turns = [dict(t) for t in e["turns"][:i + 1]]
    last = turns[-1]
    items = listed_items(last["observation"])
    task = e["task"]
    if how == "other task object":
        other = rng.choice([k for k in kinds if k != target and all(kind_of(x) != k for x in items) and k not in task])
        task = " ".join(other if w == target else w for w in task.split(" "))
    elif how == "target out of view":
        items = [f"{rng.choice([k for k in kinds if k != target and k not in task])} {rng.randint(1, 9)}"
                 if kind_of(x) == target else x for x in items]
        last["observation"] = with_items(last["observation"], items)
    elif how in ("target into view", "other object into view"):
        kind = target if how == "target into view" else rng.choice(
            [k for k in kinds if k != target and all(kind_of(x) != k for x in items) and k not in task])
        items = items[:]
        items.insert(rng.randint(0, len(items)), f"{kind} {rng.randint(1, 9)}")
        last["observation"] = with_items(last["observation"], items)
    return {**e, "task": task, "turns": turns}


@torch.no_grad()
def p_take(model, tok, record):
    datum = demo_data([record], tok, PromptSettings(show_admissible=False), "full")[0]
    ids = torch.tensor([datum.token_ids])
    last_start = max(j for j, m in enumerate(datum.response_mask) if m and (j == 0 or not datum.response_mask[j - 1]))
    probs = model(input_ids=ids).logits[0, last_start - 1].softmax(-1)
    return float(probs[tok.convert_tokens_to_ids("take")])


for path in sys.argv[1:]:
    tok, model = load_tokenizer(path), load_model(path).eval()
    rows = {}
    for e, i, target, which in cases():
        edits = ["as played", "other task object"] + (["target out of view"] if which == "take"
                                                               else ["target into view", "other object into view"])
        for how in edits:
            rows.setdefault((which, how), []).append(p_take(model, tok, edited(e, i, target, how)))
    print(path)
    for (which, how), values in sorted(rows.items()):
        print(f"  expert {which:4s} | {how:20s} | mean P(take) {sum(values) / len(values):.3f} | argmax take "
              f"{sum(v > 0.5 for v in values) / len(values):.2f} | n={len(values)}")
