"""Supervised fine-tuning on demonstrations: the data builder and a small training loop.

Used by the prepare stage to make the tiny teacher competent and to warm-start the student.
The data are rendered with the very prompt code and chat frame that the rollout uses, so a
model sees at training time exactly the token ids it will see when it plays.
"""

from __future__ import annotations

import math
import os
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.agent.prompt import (
    PromptSettings,
    format_response,
    normalize_action,
    render_window_messages,
)
from harness.agent.rollout import chat_tokens, episode_data
from harness.agent.trajectory import Datum, collate
from methods.estimators import token_logprobs


def demo_data(episodes: list[dict], tokenizer, settings: PromptSettings, layout: str = "window") -> list[Datum]:
    """Demonstration episodes (JSONL records of harness.envs.demos) -> SFT data in exactly the
    token layout of a rollout (window: one Datum per turn; full: one per episode)."""
    data: list[Datum] = []
    for index, episode in enumerate(episodes):
        steps = [(t["observation"], t["admissible"], t["action"]) for t in episode["turns"]]
        data += episode_data(tokenizer, episode["task"], steps, layout, settings, trajectory_index=index)
    return data


def recovery_data(episodes, tokenizer, settings: PromptSettings, layout: str = "window") -> list[Datum]:
    """Data from off-policy episodes (harness.default.judge_data.NoisyEpisode): the history holds the
    commands really executed. `window`: every state, the target is the expert's command there.
    `full`: one sequence per episode as it was played, the loss on the turns where the expert's
    own command was executed (the recoveries after a mistake included), the mistakes as context."""
    if layout == "full":
        data = []
        for index, episode in enumerate(episodes):
            steps = [(turn.observation, turn.admissible, turn.action) for turn in episode.turns]
            flags = [normalize_action(t.action) == normalize_action(t.expert_action) for t in episode.turns]
            if any(flags):
                data += episode_data(tokenizer, episode.task, steps, "full", settings, trajectory_index=index,
                                     train_turns=flags)
        return data
    chat = chat_tokens(tokenizer)
    data = []
    for index, episode in enumerate(episodes):
        for t, turn in enumerate(episode.turns):
            history = [(u.observation, u.action) for u in episode.turns[:t]]
            messages = render_window_messages(episode.task, history, turn.observation, turn.admissible, settings)
            prompt, _ = chat.prompt_ids(messages)
            reply = chat.encode(format_response(turn.expert_action, settings)) + [chat.end_of_turn_id]
            data.append(Datum(prompt + reply, [0] * len(prompt) + [1] * len(reply),
                              [-1] * len(prompt) + [t] * len(reply), [0.0] * (len(prompt) + len(reply)), index))
    return data


def labelled_data(prompt_messages: list[list[dict]], replies: list[str], tokenizer) -> list[Datum]:
    """Generic (chat prompt, reply) pairs -> SFT data, e.g. judge examples for the teacher."""
    chat = chat_tokens(tokenizer)
    data = []
    for index, (messages, reply_text) in enumerate(zip(prompt_messages, replies, strict=True)):
        prompt, _ = chat.prompt_ids(messages)
        reply = chat.encode(reply_text) + [chat.end_of_turn_id]
        data.append(Datum(prompt + reply, [0] * len(prompt) + [1] * len(reply),
                          [-1] * len(prompt) + [0] * len(reply), [0.0] * (len(prompt) + len(reply)), index))
    return data


@dataclass
class SFTSettings:
    """Knobs of the supervised loop (defaults from the probe in platform.md)."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    bucket: int = 1
    """Batches are cut from windows of `bucket` x batch_size shuffled examples sorted by length, so a
    batch pads less (1: plain shuffled batches). Every example is still seen once per epoch."""
    checkpoint_every: int = 200
    """With a `checkpoint` path, train_sft saves its whole state every this many steps and resumes
    from it: a killed build loses at most this many steps."""


def batch_order(lengths: list[int], batch_size: int, bucket: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches: a shuffled pass over the examples; with bucket > 1 each window of
    bucket x batch_size examples is sorted by length, cut into batches, and the batches shuffled."""
    order = rng.sample(range(len(lengths)), len(lengths))
    if bucket <= 1:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    batches = []
    window = bucket * batch_size
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        cut = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(cut)
        batches += cut
    return batches


def response_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean NLL over response tokens, per-token correct-argmax flags, response mask), shifted by one."""
    logits_B_T_V = model(input_ids=batch["tokens_B_T"], attention_mask=batch["attention_mask_B_T"]).logits
    logits_B_S_V = logits_B_T_V[:, :-1].float()
    targets_B_S = batch["tokens_B_T"][:, 1:]
    mask_B_S = batch["response_mask_B_T"][:, 1:]
    # vocabulary along dim 1 of the transposed view: the rounding the tiny pair was built with
    nll_B_S = -token_logprobs(logits_B_S_V.transpose(1, 2), targets_B_S, dim=1)
    loss = (nll_B_S * mask_B_S).sum() / mask_B_S.sum().clamp(min=1)
    correct_B_S = (logits_B_S_V.argmax(-1) == targets_B_S).float()
    return loss, correct_B_S, mask_B_S


def train_sft(model, data: list[Datum], settings: SFTSettings, pad_id: int,
              log: Callable[[dict], None] | None = None, checkpoint: Path | None = None) -> list[float]:
    """AdamW with linear warm-up and cosine decay on the response NLL; returns the loss curve.

    With `checkpoint` (a file path), the model, optimizer, schedule, data order and random
    state are saved there atomically every `settings.checkpoint_every` steps, and a later call
    with the same path resumes from the last save, giving the same model as an unbroken run."""
    if not data:
        raise ValueError("train_sft got no data")
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def lr_factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    rng = random.Random(settings.seed)
    lengths = [len(d.token_ids) for d in data]
    batches: list[list[int]] = []
    order: list[int] = []
    losses: list[float] = []
    first = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["settings"] != asdict(settings) or state["examples"] != len(data):
            raise ValueError(f"SFT checkpoint {checkpoint} was made by other settings or data "
                             f"({state['settings']}, {state['examples']} examples); delete it to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        batches, order, losses, first = state["batches"], state["order"], state["losses"], state["step"]
        if log is not None:
            log({"resumed": first})
    model.train()
    for step in range(first, settings.steps):
        if settings.bucket > 1:
            if not batches:
                batches = batch_order(lengths, settings.batch_size, settings.bucket, rng)
            picked = batches.pop(0)
        else:  # the original sampler: batches may straddle two epochs
            if len(order) < settings.batch_size:
                order += rng.sample(range(len(data)), len(data))
            picked, order = order[: settings.batch_size], order[settings.batch_size:]
        batch = {k: v.to(device) for k, v in collate([data[i] for i in picked], pad_id).items()}
        loss, _, _ = response_nll(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log is not None:
            log({"step": step, "loss": losses[-1], "lr": scheduler.get_last_lr()[0]})
        done = step + 1
        if checkpoint is not None and done < settings.steps and done % settings.checkpoint_every == 0:
            _save_state(checkpoint, {
                "settings": asdict(settings), "examples": len(data), "step": done, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng.getstate(),
                "torch_rng": torch.get_rng_state(), "batches": batches, "order": order, "losses": losses})
    model.eval()
    return losses


def _save_state(path: Path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def action_accuracy(model, data: list[Datum], tokenizer, pad_id: int, batch_size: int = 64) -> dict[str, float]:
    """Exact-match next-action accuracy per command verb (every token of a turn's reply
    argmax-correct, teacher-forced), so that `take`/`move`/`use`, which need the goal matched
    against what is in view, show apart. Works for both layouts: replies are told apart by
    their turn index, so a `full` datum counts each of its turns."""
    device = next(model.parameters()).device
    hits: dict[str, list[int]] = defaultdict(list)
    was_training = model.training
    model.eval()
    for start in range(0, len(data), batch_size):
        chunk = data[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
        _, correct_B_S, mask_B_S = response_nll(model, batch)
        for row, datum in enumerate(chunk):
            replies: dict[int, list[int]] = defaultdict(list)
            wrong: dict[int, int] = defaultdict(int)
            for t, (token, turn) in enumerate(zip(datum.token_ids, datum.turn_index, strict=True)):
                if datum.response_mask[t] and t > 0:
                    replies[turn].append(token)
                    wrong[turn] += int(correct_B_S[row, t - 1].item() == 0)
            for turn, reply in replies.items():
                verb = tokenizer.decode(reply, skip_special_tokens=True).split(" ")[0] or "?"
                hits[verb].append(int(wrong[turn] == 0))
    model.train(was_training)
    result = {verb: sum(v) / len(v) for verb, v in sorted(hits.items())}
    result["all"] = sum(sum(v) for v in hits.values()) / max(1, sum(len(v) for v in hits.values()))
    return result
