"""Probe (session 10): teacher/student agreement with the expert by turn index, on every state of the
warm-start student's greedy and T=1 rollouts of the first N games per split.

    python probe_turns.py 20 <hydra overrides selecting the pair>
"""
import sys, json
from collections import defaultdict
from dataclasses import replace
import torch
from harness import run as harness_run
from harness.config import register_configs, rollout_settings
from harness.default.dagger import labelled_rollouts, _state_datum
from harness.default.sft import action_accuracy
from harness.envs import EnvPool, discover_games, interleave_task_types
register_configs()
def main():
    from hydra import compose, initialize_config_dir
    overrides = sys.argv[2:]
    ngames = int(sys.argv[1])
    with initialize_config_dir(config_dir=str(harness_run.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    root, _ = harness_run.data_root(cfg)
    models, _ = harness_run.load_models(cfg, root)
    tok, prompt = models.tokenizer, harness_run.prompt_settings(cfg)
    games = []
    for split in ("valid_seen", "valid_unseen"):
        games += interleave_task_types(discover_games(root, split).games)[:ngames]
    base = rollout_settings(cfg)
    buckets = [(0, 5), (5, 10), (10, 15), (15, 20), (20, 30)]
    out = {}
    with EnvPool(num_workers=cfg.env.num_workers, max_steps=cfg.env.max_steps) as pool:
        for mode, st in {"greedy": replace(base, greedy=True), "T1": replace(base, greedy=False, temperature=1.0, top_p=1.0)}.items():
            eps = labelled_rollouts(models.student, tok, pool, games, st, prompt, seed=0, source=mode)
            for lo, hi in buckets:
                data = [_state_datum(e, t, tok, prompt, cfg.prompt.layout, i) for i, e in enumerate(eps)
                        for t in range(lo, min(hi, len(e.executed)))]
                if not data:
                    continue
                row = {"n": len(data)}
                for role, m in (("teacher", models.teacher), ("student", models.student)):
                    row[role] = round(action_accuracy(m, data, tok, tok.pad_token_id)["all"], 3)
                out[f"{mode} turns {lo}-{hi}"] = row
                print(mode, lo, hi, row, flush=True)
    json.dump(out, open("probe_turns.out.json", "w"), indent=1)


if __name__ == "__main__":
    main()
