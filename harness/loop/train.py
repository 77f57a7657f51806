"""The distillation loop: rollout -> scoring (+ judge) -> method loss -> AdamW step.

One optimizer step reads as one story (nanoGPT style):
  1. the method's policy plays `envs_per_step` train games (student on-policy; teacher or
     expert for sft; student with teacher turns mixed in under guidance, `make_sampler`);
  2. the teacher scores every datum once (no grad) and, for the SAGE family, judges every turn;
  3. the method turns teacher signals into weights, and their totals over the WHOLE step fix
     the loss scale, so gradient accumulation over micro-batches never changes it;
  4. per micro-batch: student forward with grad, method loss, backward; then clip and step.
Every step appends one line to metrics.jsonl; checkpoints are atomic and a run resumes.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm

from harness.agent.prompt import PromptSettings
from harness.agent.rollout import RolloutSettings, rollout
from harness.agent.sampler import HFSampler, MixedSampler, Sampler
from harness.agent.trajectory import Datum, Trajectory, collate
from harness.config import rollout_settings
from harness.default.sft import demo_data
from harness.envs import EnvPool, GameInfo
from harness.envs.demos import play_experts
from harness.loop import checkpoint, scoring
from harness.loop.judge import oracle_labels
from methods import LABELS, Method, MethodBatch, merge_stats

# metrics.jsonl names (analysis/RUN_RECORD.md) for the method's stat names
_RENAME = {f"label_{label}_frac": f"label_frac_{label}" for label in LABELS} | {
    "weight_mean": "weight_norm_mean", "weight_min": "weight_norm_min", "weight_max": "weight_norm_max"}


@dataclass
class Models:
    """The live models of a run and what scoring needs to know about them."""

    student: torch.nn.Module
    teacher: torch.nn.Module
    tokenizer: object
    keep_vocab: int  # teacher logit rows kept (the student's vocabulary size)


def make_optimizer(student, cfg) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters with warm-up then constant/linear/cosine decay."""
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"train.schedule must be constant, linear or cosine, not {cfg.schedule!r}")

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_sampling(method: Method, rollout_cfg) -> None:
    """Refuse the sampled estimator with rollouts not drawn from the student's own distribution:
    the rollout records log p at temperature 1 without top-p, which its importance ratio divides by."""
    if method.estimator == "sampled" and (rollout_cfg.temperature != 1.0 or rollout_cfg.top_p != 1.0):
        raise ValueError(
            f"method {method.name!r} with estimator=sampled needs rollout.temperature=1 and rollout.top_p=1 "
            f"(got {rollout_cfg.temperature} and {rollout_cfg.top_p}): its importance ratio is taken against the "
            "rollout's log-probs, which are the student's at temperature 1 without top-p, so any other "
            "sampling would weight the tokens wrongly. Set rollout.temperature=1 rollout.top_p=1, or use "
            "method.estimator=full_kl or jsd (they do not use the rollout's log-probs).")


def games_for_step(games: list[GameInfo], step: int, count: int, seed: int) -> tuple[list[GameInfo], int]:
    """The step's games: epochs of seeded permutations, so step k always plays the same games."""
    position = step * count
    picked = []
    for p in range(position, position + count):
        epoch, offset = divmod(p, len(games))
        order = list(range(len(games)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        picked.append(games[order[offset]])
    return picked, position + count


def _micro_batches(data: list[Datum], size: int) -> list[list[Datum]]:
    # Similar lengths together: less padding in every forward.
    ordered = sorted(data, key=lambda d: len(d.token_ids))
    return [ordered[k:k + size] for k in range(0, len(ordered), size)]


def method_batches(micro: list[dict], teacher_outs: list, judged=None, oracle=None, *, trajectories=None,
                   progress: float | None = None, rewards: bool = False) -> list[MethodBatch]:
    """The method's view of each collated micro-batch: masks, teacher confidence, per-turn judge
    or oracle signals looked up by (trajectory, turn), and each row's sequence: its trajectory.
    With `trajectories`: turn positions (tcod) and, with `rewards`, the outcomes (atod's RL term)."""
    batches = []
    for b, t_out in zip(micro, teacher_outs, strict=True):
        keys = [tuple(k) for k in b["turn_keys_U"].tolist()]
        turn_signals = {}
        if judged is not None:
            probs, valid = judged
            turn_signals["judge_probs_U_3"] = torch.stack([probs[k] for k in keys]) if keys else torch.zeros(0, 3)
            turn_signals["judge_valid_U"] = torch.tensor([valid[k] for k in keys], dtype=torch.bool)
        if oracle is not None:
            turn_signals["oracle_labels_U"] = torch.tensor([oracle[k] for k in keys], dtype=torch.long)
        if trajectories is not None:
            turn_signals |= _turn_positions(keys, trajectories, rewards)
        batches.append(MethodBatch(response_mask_B_T=b["response_mask_B_T"], turn_ids_B_T=b["turn_ids_B_T"],
                                   teacher_top1_B_T=t_out.top1_B_T.cpu() if t_out is not None else None,
                                   teacher_logp_B_T=t_out.logp_B_T.cpu() if t_out is not None else None,
                                   old_logp_B_T=b["old_logp_B_T"], sequence_ids_B=_trajectory_ids_B(b),
                                   progress=progress, **turn_signals))
    return batches


def _turn_positions(keys: list[tuple[int, int]], trajectories: list[Trajectory], rewards: bool) -> dict:
    """Per turn: its index in its trajectory, the trajectory's length and index; with `rewards` also
    the trajectory's outcome (won), the env's success signal: NOT verifier-free (atod only)."""
    signals = {"turn_index_U": torch.tensor([t for _, t in keys], dtype=torch.long),
               "num_turns_U": torch.tensor([trajectories[i].num_turns for i, _ in keys], dtype=torch.long),
               "trajectory_U": torch.tensor([i for i, _ in keys], dtype=torch.long)}
    if rewards:
        signals["reward_U"] = torch.tensor([float(trajectories[i].won) for i, _ in keys], dtype=torch.float32)
    return signals


def _trajectory_ids_B(b: dict) -> torch.Tensor:
    """Each row's trajectory, read from its turns' (trajectory, turn) keys: in the window layout
    a trajectory's turns are separate rows (even in separate micro-batches) of one sequence.
    A row without response tokens gets -1 (it carries no weight)."""
    last_turn_B = b["turn_ids_B_T"].max(dim=-1).values
    if not len(b["turn_keys_U"]):
        return torch.full_like(last_turn_B, -1)
    return torch.where(last_turn_B >= 0, b["turn_keys_U"][last_turn_B.clamp(min=0), 0], -1)


def make_sampler(models: Models, method: Method, settings: RolloutSettings, guide_p: float, seed: int) -> Sampler:
    """Who acts in a step's rollouts: the teacher (sft), the student, or both (guidance p > 0:
    the teacher acts on each env's turn with chance p, drawn per env and turn from `seed`)."""
    from methods.guidance import teacher_rule

    if method.trajectory_source == "teacher":
        return HFSampler(models.teacher, models.tokenizer, settings, actor="teacher")
    if guide_p > 0:
        return MixedSampler(models.student, models.teacher, models.tokenizer, settings, teacher_rule(guide_p, seed))
    return HFSampler(models.student, models.tokenizer, settings)


def train_step(step: int, cfg, models: Models, method: Method, games: list[GameInfo], pool: EnvPool,
               optimizer, scheduler, judge=None, prompt: PromptSettings | None = None,
               next_games: list[GameInfo] | None = None) -> dict:
    """One optimizer step; returns its metrics line. `next_games` (the next step's) are loaded and
    reset in the env workers while this step scores and updates (the workers are idle then)."""
    times = {"rollout": 0.0, "scoring": 0.0, "judge": 0.0, "update": 0.0}
    started = time.perf_counter()
    settings = rollout_settings(cfg)
    seed = cfg.seed * 1_000_003 + step
    clock = {"generate": 0.0, "env": 0.0}  # the rollout's split: sampler.generate vs pool reset/step
    guide_p = method.guide_p(step, cfg.train.steps)
    teacher_frac = None
    if method.trajectory_source == "expert":
        episodes = play_experts(pool, games, expert="explorer")
        clock["env"] = time.perf_counter() - started
        data = demo_data(episodes, models.tokenizer, prompt, cfg.prompt.layout)
        trajectories = None
        success = sum(e["won"] for e in episodes) / len(episodes)
        invalid = repeated = 0.0
    else:
        sampler = make_sampler(models, method, settings, guide_p, seed)
        trajectories = rollout(sampler, models.tokenizer, pool, games, settings, prompt, seed=seed, timings=clock)
        data = [d for trajectory in trajectories for d in trajectory.data]
        turns = max(1, sum(t.num_turns for t in trajectories))
        teacher_frac = sum(turn.actor == "teacher" for t in trajectories for turn in t.turns) / turns
        success = sum(t.won for t in trajectories) / len(trajectories)
        invalid = sum(t.invalid_actions for t in trajectories) / turns
        repeated = sum(t.repeated_actions for t in trajectories) / turns
    if next_games:
        pool.preload([g.gamefile for g in next_games])
    times["rollout"] = time.perf_counter() - started
    if not data:
        # Every episode failed outside the game (env workers died): stepping AdamW on an empty
        # batch would still move the weights and the schedule. Stop instead; a rerun resumes.
        reasons = sorted({t.failed for t in trajectories or [] if t.failed})
        raise RuntimeError(f"step {step}: no training data, every episode failed ({reasons[:3]}) or the "
                           f"teacher acted on every turn (guide p {guide_p:.3f}); rerun to resume from the last checkpoint")

    pad_id = models.tokenizer.pad_token_id
    micro = [collate(chunk, pad_id) for chunk in _micro_batches(data, cfg.train.micro_batch_size)]
    started = time.perf_counter()
    teacher_outs = [scoring.teacher_pass(models.teacher, b, keep_vocab=models.keep_vocab, chunk_size=cfg.train.chunk_size,
                                         temperature=method.temperature, group_tokens=cfg.train.scoring_tokens)
                    if method.needs_teacher_logits else None for b in micro]
    times["scoring"] += time.perf_counter() - started

    judged = oracle = None
    if method.needs_judge:
        started = time.perf_counter()
        judged = judge(models.teacher, models.tokenizer, trajectories)
        times["judge"] = time.perf_counter() - started
    elif method.gate == "oracle":
        oracle = oracle_labels(trajectories)

    batches = method_batches(micro, teacher_outs, judged, oracle, trajectories=trajectories,
                             progress=step / cfg.train.steps, rewards=method.needs_reward)
    totals = method.totals(batches)

    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    stats, kls = [], []
    device = next(models.student.parameters()).device
    teacher_head = scoring.model_parts(models.teacher)[1] if method.needs_teacher_logits else None
    for b, t_out, mb in zip(micro, teacher_outs, batches, strict=True):
        b = {k: v.to(device) for k, v in b.items()}
        # the method's own token loss (sft: NLL of the policy's tokens, no teacher)
        out = scoring.student_pass(models.student, teacher_head, b, t_out, method=method, chunk_size=cfg.train.chunk_size,
                                    group_tokens=cfg.train.scoring_tokens)
        if out.kl_B_T is not None:
            kls.append((out.kl_B_T.cpu() * mb.response_mask_B_T).sum().item())
        loss, batch_stats = method.loss(replace(_on_device(mb, device), token_loss_B_T=out.token_loss_B_T,
                                                  student_logp_B_T=out.logp_B_T), totals)
        loss.backward()
        stats.append(batch_stats)
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in models.student.parameters() if p.requires_grad], cfg.train.grad_clip)
    optimizer.step()
    scheduler.step()
    times["update"] = time.perf_counter() - started

    merged = {_RENAME.get(k, k): v for k, v in merge_stats(stats).items()}
    tokens = max(1.0, merged.get("tokens", 1.0))
    return merged | {
        "step": step, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
        "kl_student_teacher": sum(kls) / tokens if kls else None,
        "rollout_success": success, "invalid_action_rate": invalid, "repeated_action_rate": repeated,
        "episodes": len(games), "data": len(data), "env_worker_restarts": pool.restarts,
        "failed_episodes": sum(1 for t in trajectories if t.failed) if trajectories else 0,
        **{f"time_{k}_s": v for k, v in times.items()}, "time_step_s": sum(times.values()),
        "time_generate_s": clock["generate"], "time_env_s": clock["env"],  # parts of time_rollout_s
        "guide_p": guide_p, "teacher_turn_frac": teacher_frac,
    }


def _on_device(batch: MethodBatch, device: torch.device) -> MethodBatch:
    """The method batch's tensors on the student's device (the token losses are computed there)."""
    moved = {f.name: getattr(batch, f.name).to(device) for f in fields(batch)
             if isinstance(getattr(batch, f.name), torch.Tensor)}
    return replace(batch, **moved)


def train(cfg, run_dir: Path, models: Models, method: Method, games: list[GameInfo], pool: EnvPool,
          judge=None, prompt: PromptSettings | None = None, logger=None) -> int:
    """Run (or resume) the loop in `run_dir`; returns the number of steps done. `logger`
    (harness/loop/loggers.py) gets a copy of every metrics line."""
    optimizer, scheduler = make_optimizer(models.student, cfg.train)
    start = 0
    found = checkpoint.latest(run_dir)
    if found is not None:
        state = checkpoint.load_state(found)
        checkpoint.load_weights_into(models.student, found)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        start = state["step"]
        checkpoint.truncate_metrics(run_dir, start)
        print(f"resuming {run_dir} from {found.name} (step {start})")
    else:
        checkpoint.truncate_metrics(run_dir, 0)
    stop = cfg.train.steps if cfg.train.stop_after is None else min(cfg.train.steps, cfg.train.stop_after)
    models.student.train()
    bar = tqdm(range(start, stop), initial=start, total=cfg.train.steps, desc=f"{method.name} seed {cfg.seed}", unit="step")
    for step in bar:
        step_games, position = games_for_step(games, step, cfg.train.envs_per_step, cfg.seed)
        next_games = games_for_step(games, step + 1, cfg.train.envs_per_step, cfg.seed)[0] if step + 1 < stop else None
        line = train_step(step, cfg, models, method, step_games, pool, optimizer, scheduler, judge, prompt,
                          next_games=next_games)
        with open(run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
        if logger is not None:
            logger.log_step(line)
        bar.set_postfix(loss=f"{line.get('loss', 0):.4f}", success=f"{line['rollout_success']:.2f}")
        done = step + 1
        if done % cfg.train.checkpoint_every == 0 or done == cfg.train.steps:
            checkpoint.save(run_dir, models.student, models.tokenizer, optimizer, scheduler, done,
                            {"data_position": position})
    return stop
