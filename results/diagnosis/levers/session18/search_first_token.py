"""Session 18: the first reply token's accuracy on held-out search states (harness/default/curriculum.py's
heldout_report, which every new teacher build now reports) for teachers built before it.

    python search_first_token.py <layouts, e.g. window,full> <teacher dir> [more]
"""
import json
import sys

import torch

from harness.agent.prompt import PromptSettings
from harness.default.curriculum import heldout_report
from harness.models import load_model, load_tokenizer

torch.set_num_threads(1)
CACHE = "/root/.cache/sage-opd/tiny"
demos = [json.loads(line) for line in open(f"{CACHE}/demos-610734a43890b940-v3.jsonl")]
for path in sys.argv[2:]:
    tok, model = load_tokenizer(path), load_model(path)
    for layout in sys.argv[1].split(","):
        print(path, layout, json.dumps(heldout_report(model, demos[:20], tok, PromptSettings(show_admissible=False), tok.pad_token_id, layout)))
