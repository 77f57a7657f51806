import torch, time, json, sys
torch.set_num_threads(2)
from harness.models import load_model, load_tokenizer
from harness.default.prepare import renamed_copies
from harness.default.sft import demo_data, action_accuracy, train_sft, SFTSettings
from harness.agent.prompt import PromptSettings
root = "/root/.cache/sage-opd/tiny"
t = root+"/teacher-c5a05ba7ab31fdbc/teacher"
tok = load_tokenizer(t); m = load_model(t); m.requires_grad_(True)
demos = [json.loads(l) for l in open(root+"/demos-610734a43890b940-v3.jsonl")]
held, train = demos[:20], demos[20:]
ps = PromptSettings(show_admissible=False)
data = demo_data(train + renamed_copies(train, 1, 0, False), tok, ps, "full")
probe = demo_data(train[:60], tok, ps, "full"); hd = demo_data(held, tok, ps, "full")
lr = float(sys.argv[1]); chunk = int(sys.argv[2]); n = int(sys.argv[3])
for i in range(n):
    t0 = time.time()
    train_sft(m, data, SFTSettings(steps=chunk, batch_size=8, lr=lr, warmup_steps=10, seed=100+i), tok.pad_token_id)
    a = action_accuracy(m, probe, tok, tok.pad_token_id, batch_size=8); h = action_accuracy(m, hd, tok, tok.pad_token_id, batch_size=8)
    print(f"+{(i+1)*chunk} steps ({time.time()-t0:.0f}s): train take {a['take']:.2f} all {a['all']:.2f} | held take {h['take']:.2f} use {h['use']:.2f} all {h['all']:.2f}", flush=True)
    m.save_pretrained(f"/tmp/cont_teacher_{(i+1)*chunk}")
