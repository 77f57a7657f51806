"""Teacher greedy on N unseen games: first divergence from the expert in each failed game."""
import sys, json
from dataclasses import replace
from collections import Counter
import torch
from harness import run as harness_run
from harness.config import register_configs, rollout_settings
from harness.default.dagger import labelled_rollouts
from harness.envs import EnvPool, discover_games, interleave_task_types
register_configs()
def main():
    from hydra import compose, initialize_config_dir
    n = int(sys.argv[1]); split = sys.argv[2]; overrides = sys.argv[3:]
    with initialize_config_dir(config_dir=str(harness_run.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    torch.manual_seed(0)
    root, _ = harness_run.data_root(cfg)
    models, _ = harness_run.load_models(cfg, root)
    tok, prompt = models.tokenizer, harness_run.prompt_settings(cfg)
    games = interleave_task_types(discover_games(root, split).games)[:n]
    st = replace(rollout_settings(cfg), greedy=True)
    with EnvPool(num_workers=cfg.env.num_workers, max_steps=cfg.env.max_steps) as pool:
        eps = labelled_rollouts(models.teacher, tok, pool, games, st, prompt, seed=0, source="g")
    kinds = Counter(); won = 0
    for e in eps:
        won += e.won
        if e.won: continue
        t = next((i for i, ok in enumerate(e.agree) if not ok), None)
        if t is None: kinds["no divergence?"] += 1; continue
        ex, lab = e.executed[t], e.labels[t]
        fb = e.feedbacks[t]
        k = f"{lab.split()[0]}->{ex.split()[0]}" + (" INVALID" if fb.strip()=="Nothing happens." else "")
        kinds[k] += 1
        print("="*80); print(e.task_type, "|", e.task, "| diverge at turn", t, "of", len(e.executed))
        for i in range(max(0, t-2), min(len(e.executed), t+4)):
            print(f"  [{i}] obs: {e.observations[i][:230]!r}")
            print(f"      did: {e.executed[i]!r}  expert: {e.labels[i]!r}  fb: {e.feedbacks[i][:80]!r}")
    print("won", won, "/", len(eps)); print(kinds.most_common())
    
if __name__ == "__main__":
    main()