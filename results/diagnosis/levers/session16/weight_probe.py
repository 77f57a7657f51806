import torch, json, sys, time
torch.set_num_threads(2)
from collections import Counter
import harness.default.sft as S
from harness.models import load_model, load_tokenizer
from harness.default.prepare import renamed_copies
from harness.agent.trajectory import collate
from harness.agent.prompt import PromptSettings
from methods.estimators import token_logprobs
W = float(sys.argv[1]); steps = int(sys.argv[2]); lr = float(sys.argv[3]); base = sys.argv[4]
def weighted_nll(model, batch):
    logits = model(input_ids=batch["tokens_B_T"], attention_mask=batch["attention_mask_B_T"]).logits[:, :-1].float()
    tg = batch["tokens_B_T"][:, 1:]; mask = batch["response_mask_B_T"][:, 1:].float()
    nll = -token_logprobs(logits.transpose(1, 2), tg, dim=1)
    first = mask.clone(); first[:, 1:] = mask[:, 1:] * (1 - mask[:, :-1])
    w = mask + (W - 1) * first
    loss = (nll * w).sum() / w.sum().clamp(min=1)
    return loss, (logits.argmax(-1) == tg).float(), mask
S.response_nll = weighted_nll
root = "/root/.cache/sage-opd/tiny"
t = f"{root}/{base}/teacher"
tok = load_tokenizer(t); m = load_model(t); m.requires_grad_(True)
demos = [json.loads(l) for l in open(root+"/demos-610734a43890b940-v3.jsonl")]
held, train = demos[:20], demos[20:]
ps = PromptSettings(show_admissible=False)
data = S.demo_data(train + renamed_copies(train, 1, 0, False), tok, ps, "full")
def confusion(sel):
    c = Counter()
    for d in S.demo_data(sel, tok, ps, "full"):
        b = collate([d], tok.pad_token_id)
        with torch.no_grad(): lg = m(input_ids=b["tokens_B_T"]).logits[0]
        ids = d.token_ids
        for i in range(1, len(ids)):
            if d.response_mask[i] and not d.response_mask[i-1]:
                g = tok.decode([ids[i]]); p = tok.decode([lg[i-1].argmax().item()])
                if g in ("take","go"): c[(g, p == g)] += 1
    return {"take_acc": round(c[("take",True)]/max(1,c[("take",True)]+c[("take",False)]),2), "go_acc": round(c[("go",True)]/max(1,c[("go",True)]+c[("go",False)]),3)}
m.eval(); print("start train", confusion(train[:60]), "held", confusion(held), flush=True)
chunk = steps // 3
for i in range(3):
    t0 = time.time(); m.train()
    S.train_sft(m, data, S.SFTSettings(steps=chunk, batch_size=8, lr=lr, warmup_steps=10, seed=100+i), tok.pad_token_id)
    m.eval(); print(f"W={W} +{(i+1)*chunk} ({time.time()-t0:.0f}s) train", confusion(train[:60]), "held", confusion(held), flush=True)
m.save_pretrained(f"/tmp/p/w{W}_{base}")
