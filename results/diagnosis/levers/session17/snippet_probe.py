"""Probe (session 17): can the teacher learn the task/list comparison from short examples, and does it carry
over to its full-episode play?

    python snippet_probe.py <teacher dir> <out dir> [steps] [snippets per step] [episodes per step] [lr]

Fine-tunes the teacher on a mix, per step: `snippets` one-message examples (the task sentence and
one search observation -> the expert's command there), half where the target is in view (the
full `take` command is trained) and half where it is not (only the first token, the verb, is
trained: the place to go next needs the history), drawn from the demonstrations, their renamed
copies and their counterfactual edits (harness/default/counterfactual.py); plus `episodes` whole
demonstrations as in its SFT, so the other skills keep being trained. Held-out demonstrations
(the first 20) are never used. Saves the model to <out dir>; run probe_reads_task.py and the full
evaluation on it.
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
from harness.default.tiny import save_tiny
from harness.models import load_model, load_tokenizer

torch.manual_seed(0)
teacher_dir, out = sys.argv[1], sys.argv[2]
steps, per_step, episodes_per_step, lr = (int(sys.argv[3]) if len(sys.argv) > 3 else 300,
                                          int(sys.argv[4]) if len(sys.argv) > 4 else 48,
                                          int(sys.argv[5]) if len(sys.argv) > 5 else 4,
                                          float(sys.argv[6]) if len(sys.argv) > 6 else 2e-4)
CACHE = "/root/.cache/sage-opd/tiny"
demos = [json.loads(line) for line in open(f"{CACHE}/demos-610734a43890b940-v3.jsonl")]
train = demos[20:]
episodes = train + renamed_copies(train, 1, 0)
prompt = PromptSettings(show_admissible=False)
tok, model = load_tokenizer(teacher_dir), load_model(teacher_dir)


def snippets_of(records):
    """(positive, negative) one-message records: the last turn of each search state alone."""
    pos, neg = [], []
    for e in records:
        for i, t in enumerate(e["turns"]):
            if i == 0 or listed_items(t["observation"]) is None:
                continue
            one = {**e, "turns": [t]}
            if t["action"].startswith("take "):
                pos.append(one)
            elif t["action"].startswith(("go to ", "open ")):
                neg.append(one)
            if t["action"].startswith("take "):
                break  # after the first take the search is over
    return pos, neg


pos, neg = snippets_of(episodes)
for r in counterfactual_episodes(episodes, 8000, 0):  # the edited turn alone
    (pos if r["turns"][-1]["action"].startswith("take ") else neg).append({**r, "turns": r["turns"][-1:]})
print(f"snippets: {len(pos)} take, {len(neg)} go/open; episodes {len(episodes)}", flush=True)


def datum(record, first_token_only):
    d = demo_data([record], tok, prompt, "full")[0]
    if first_token_only:
        first = d.response_mask.index(1)
        mask = [1 if j == first else 0 for j in range(len(d.response_mask))]
        d = replace(d, response_mask=mask)
    return d


pos_data = [datum(r, False) for r in pos]
neg_data = [datum(r, True) for r in neg]
episode_data = demo_data(episodes, tok, prompt, "full")
rng = random.Random(0)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
model.train()
for step in range(steps):
    snip = rng.sample(pos_data, per_step // 2) + rng.sample(neg_data, per_step // 2)
    batch = {k: v for k, v in collate(snip, tok.pad_token_id).items()}
    loss_s, correct, mask = response_nll(model, batch)
    loss = loss_s
    if episodes_per_step:
        ep = {k: v for k, v in collate(rng.sample(episode_data, episodes_per_step), tok.pad_token_id).items()}
        loss_e, _, _ = response_nll(model, ep)
        loss = loss + loss_e
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if step % 25 == 0 or step == steps - 1:
        first_ok = float((correct * mask).sum() / mask.sum())
        print(f"step {step} snippet loss {loss_s.item():.3f} episode loss {loss_e.item() if episodes_per_step else 0:.3f} "
              f"snippet token accuracy {first_ok:.2f}", flush=True)
model.eval()
save_tiny(model, tok, out)
print(f"saved {out}")
