import torch, sys, shutil
from harness.models import load_model
root = "/root/.cache/sage-opd/tiny"
keys = sys.argv[2:]; out = sys.argv[1]
ms = [load_model(f"{root}/{k}/teacher") for k in keys]
sd = {n: sum(m.state_dict()[n].float() for m in ms) / len(ms) for n in ms[0].state_dict()}
ms[0].load_state_dict(sd); ms[0].save_pretrained(out)
for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
    try: shutil.copy(f"{root}/{keys[0]}/teacher/{f}", out)
    except FileNotFoundError: pass
