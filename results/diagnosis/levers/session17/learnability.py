"""Probe (session 17): can a fresh model of the teacher's size learn the task/list comparison at all?

    python learnability.py [steps] [batch] [lr]

A fresh 4 x 256 tiny Llama (the teacher's spec and tokenizer) trained only on one-message
examples (the task and one search observation -> the expert's command: the whole `take` where
the target is in view, the first token alone where it is not; from the train demonstrations,
their renamed copies and counterfactual edits, balanced per batch). Every 150 steps, on the same
kind of examples from the 20 held-out demonstrations and their edits: the argmax first token's
accuracy where the target is in view / not, and P(take) where it is in view when the task
sentence names another object instead (a model that compares drops it).
"""
import json
import random
import sys
from dataclasses import replace

import torch

from harness.agent.prompt import PromptSettings
from harness.agent.trajectory import collate
from harness.default.counterfactual import counterfactual_episodes, listed_items
from harness.default.prepare import renamed_copies
from harness.default.sft import demo_data, response_nll
from harness.default.tiny import TEACHER_SPEC, build_tiny_model
from harness.envs.experts import kind_of
from harness.models import load_tokenizer

torch.manual_seed(0)
steps, batch, lr = (int(sys.argv[1]) if len(sys.argv) > 1 else 600, int(sys.argv[2]) if len(sys.argv) > 2 else 64,
                    float(sys.argv[3]) if len(sys.argv) > 3 else 1e-3)
CACHE = "/root/.cache/sage-opd/tiny"
tok = load_tokenizer(f"{CACHE}/teacher-c5a05ba7ab31fdbc/teacher")
demos = [json.loads(line) for line in open(f"{CACHE}/demos-610734a43890b940-v3.jsonl")]
prompt = PromptSettings(show_admissible=False)


def snippets(episodes, n_edits):
    pos, neg = [], []
    for e in episodes:
        for i, t in enumerate(e["turns"]):
            if i == 0 or listed_items(t["observation"]) is None:
                continue
            if t["action"].startswith("take "):
                pos.append({**e, "turns": [t]})
                break
            if t["action"].startswith(("go to ", "open ")):
                neg.append({**e, "turns": [t]})
    for r in counterfactual_episodes(episodes, n_edits, 0):
        (pos if r["turns"][-1]["action"].startswith("take ") else neg).append({**r, "turns": r["turns"][-1:]})
    return pos, neg


def datum(record, first_only):
    d = demo_data([record], tok, prompt, "full")[0]
    if first_only:
        first = d.response_mask.index(1)
        d = replace(d, response_mask=[int(j == first) for j in range(len(d.response_mask))])
    return d


train_eps = demos[20:] + renamed_copies(demos[20:], 1, 0)
tp, tn = snippets(train_eps, 8000)
hp, hn = snippets(demos[:20], 200)
kinds = sorted({kind_of(r["turns"][0]["action"].split(" ")[1] + " 1") for r in tp})
swapped = []
rng = random.Random(1)
for r in hp:
    target = r["turns"][0]["action"].split(" ")[1]
    other = rng.choice([k for k in kinds if k != target and k not in r["task"]
                        and all(kind_of(x) != k for x in listed_items(r["turns"][0]["observation"]))])
    swapped.append({**r, "task": " ".join(other if w == target else w for w in r["task"].split(" "))})
TP, TN = [datum(r, False) for r in tp], [datum(r, True) for r in tn]
HP, HN, HS = ([datum(r, True) for r in rs] for rs in (hp, hn, swapped))
print(f"train {len(TP)} take / {len(TN)} go-on; held out {len(HP)} / {len(HN)}", flush=True)
take_id = tok.convert_tokens_to_ids("take")


@torch.no_grad()
def first_token(model, data):
    """(argmax == label rate, mean P(take)) at the first response token."""
    ok, p = 0, 0.0
    for start in range(0, len(data), 64):
        chunk = data[start:start + 64]
        b = collate(chunk, tok.pad_token_id)
        logits = model(input_ids=b["tokens_B_T"], attention_mask=b["attention_mask_B_T"]).logits
        for row, d in enumerate(chunk):
            j = d.response_mask.index(1)
            probs = logits[row, j - 1].softmax(-1)
            ok += int(probs.argmax()) == d.token_ids[j]
            p += float(probs[take_id])
    return ok / len(data), p / len(data)


model = build_tiny_model(TEACHER_SPEC, tok, seed=0)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
r = random.Random(0)
for step in range(steps + 1):
    if step % 150 == 0:
        model.eval()
        (ap, pp), (an, pn), (_, ps) = first_token(model, HP), first_token(model, HN), first_token(model, HS)
        print(f"step {step}: held out, target in view: right verb {ap:.2f}, P(take) {pp:.2f} | not in view: right verb "
              f"{an:.2f}, P(take) {pn:.2f} | in view but the task names another object: P(take) {ps:.2f}", flush=True)
        model.train()
    if step == steps:
        break
    b = collate(r.sample(TP, batch // 2) + r.sample(TN, batch // 2), tok.pad_token_id)
    loss, _, _ = response_nll(model, b)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
