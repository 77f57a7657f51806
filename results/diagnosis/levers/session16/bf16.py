import torch, time
torch.set_num_threads(2)
from harness.models import load_model
t = "/root/.cache/sage-opd/tiny/teacher-c5a05ba7ab31fdbc/teacher"
m32 = load_model(t).eval(); m16 = load_model(t).eval().to(torch.bfloat16)
x = torch.randint(5, 300, (16, 900))
for name, m in (("fp32", m32), ("bf16", m16), ("fp32", m32), ("bf16", m16)):
    with torch.no_grad():
        t0 = time.perf_counter(); lg = m(input_ids=x).logits; dt = time.perf_counter() - t0
    print(name, f"{dt:.2f}s", flush=True)
with torch.no_grad():
    a = torch.log_softmax(m32(input_ids=x).logits.float(), -1); b = torch.log_softmax(m16(input_ids=x).logits.float(), -1)
print("max |dlogp|", (a - b).abs().max().item(), "mean", (a - b).abs().mean().item())
