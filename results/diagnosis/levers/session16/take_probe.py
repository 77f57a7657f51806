import torch, json, sys
torch.set_num_threads(2)
from collections import Counter
from harness.models import load_model, load_tokenizer
from harness.default.sft import demo_data
from harness.agent.trajectory import collate
from harness.agent.prompt import PromptSettings
root = "/root/.cache/sage-opd/tiny"
t = f"{root}/{sys.argv[1]}/teacher"
tok = load_tokenizer(t); m = load_model(t).eval()
demos = [json.loads(l) for l in open(root+"/demos-610734a43890b940-v3.jsonl")]
sel = demos[20:80] if sys.argv[2] == "train" else demos[:20]
ps = PromptSettings(show_admissible=False)
data = demo_data(sel, tok, ps, "full")
conf = Counter(); shown = 0
for d, ep in zip(data, sel):
    b = collate([d], tok.pad_token_id)
    with torch.no_grad():
        logits = m(input_ids=b["tokens_B_T"]).logits[0]
    ids = d.token_ids
    # first response token of each turn
    for t_ in range(1, len(ids)):
        if d.response_mask[t_] and not d.response_mask[t_-1]:
            gold = tok.decode([ids[t_]]); pred_id = logits[t_-1].argmax().item(); pred = tok.decode([pred_id])
            p = torch.softmax(logits[t_-1], -1)
            conf[(gold, pred)] += 1
            if gold == "take" and pred != "take" and shown < 6:
                shown += 1
                ctx = tok.decode(ids[max(0,t_-120):t_])
                print("----", ep["task"], "| p(take)=%.2f p(%s)=%.2f" % (p[ids[t_]].item(), pred, p[pred_id].item()))
                print(ctx[-600:])
print(sorted(conf.items(), key=lambda x: -x[1]))
