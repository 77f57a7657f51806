"""Scoring figures from one run: one-pass vs per-turn teacher throughput, chunked vs naive memory,
grouped unmasked forwards vs one masked forward per micro-batch.

    python -m harness.bench.scoring [--part speed|memory|grouping|all] [--tokens 4096] [--device cpu]

speed:  the tiny default teacher scores 10-turn trajectories (`full` layout) in one forward pass
        per trajectory, against one forward per turn over that turn's prefix (what a per-turn
        scorer does). Tokens/s count scored response tokens.
memory: teacher + student scoring with the full-vocabulary KL and its backward at Qwen2.5
        vocabulary sizes (student 151,936 rows, teacher 152,064) over --tokens response tokens,
        random weights. `naive` takes the models' own forward (logits for every position at
        once), `chunked` is harness.loop.scoring. On CPU each variant runs in a fresh subprocess and
        the figure is the peak resident set size during scoring (Linux VmHWM, reset through
        /proc/self/clear_refs just before) minus the resident size before; torch frees big
        tensors straight back to the OS (mmap), so the peak follows the live tensors. On CUDA it
        is torch.cuda.max_memory_allocated above the memory allocated before.
grouping: an `opd` step's scoring and update on the default pair's shapes (tiny teacher and
        student, 16 trajectories of 22-30 turns, about 1,000-1,400 tokens each): teacher pass,
        student pass with the full-vocabulary KL and its backward, with the padding mask over the
        whole micro-batch (before train.scoring_tokens), without it, and in groups of
        --group-tokens positions (the default); the largest difference in loss and gradients.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import time

import torch

from harness.agent.trajectory import Datum, collate
from harness.default.tiny import (
    STUDENT_SPEC,
    TEACHER_SPEC,
    TinyModelSpec,
    build_tiny_model,
    build_tokenizer,
)
from harness.loop import scoring
from harness.loop.scoring import model_parts, student_pass, teacher_pass

STUDENT_ROWS, TEACHER_ROWS = 151_936, 152_064  # Qwen2.5-1.5B and -7B embedding rows


def trajectory(
    rng: torch.Generator, vocab: int, turns: int, prompt: int, response: int, observation: int
) -> Datum:
    """A `full`-layout datum: prompt, then per turn a response and the next observation."""
    kinds = [0] * prompt
    turn_index = [-1] * prompt
    for t in range(turns):
        kinds += [1] * response + [0] * (observation if t < turns - 1 else 0)
        turn_index += [t] * response + [-1] * (observation if t < turns - 1 else 0)
    ids = torch.randint(5, vocab, (len(kinds),), generator=rng).tolist()
    return Datum(ids, kinds, turn_index, [-1.0 * k for k in kinds])


def per_turn_data(datum: Datum, turns: int) -> list[list[Datum]]:
    """For each turn, the datum cut after that turn's response, scored on that turn only."""
    out = []
    for t in range(turns):
        end = max(i for i, u in enumerate(datum.turn_index) if u == t) + 1
        mask = [int(u == t) for u in datum.turn_index[:end]]
        out.append(
            [
                Datum(
                    datum.token_ids[:end], mask, datum.turn_index[:end], datum.sample_logprobs[:end]
                )
            ]
        )
    return out


def speed(args: argparse.Namespace) -> None:
    tokenizer = build_tokenizer()
    teacher = build_tiny_model(TEACHER_SPEC, tokenizer, seed=0).eval()
    vocab = len(tokenizer)
    rng = torch.Generator().manual_seed(0)
    data = [trajectory(rng, vocab, args.turns, 150, 8, 40) for _ in range(args.batch)]
    full = collate(data, tokenizer.pad_token_id)
    cuts = [per_turn_data(d, args.turns) for d in data]
    per_turn = [collate([c[t][0] for c in cuts], tokenizer.pad_token_id) for t in range(args.turns)]
    scored = int(full["response_mask_B_T"].sum())

    def one_pass() -> None:
        teacher_pass(teacher, full, keep_vocab=vocab)

    def turn_by_turn() -> None:
        for batch in per_turn:
            teacher_pass(teacher, batch, keep_vocab=vocab)

    times = {}
    for name, run in (("full one-pass", one_pass), ("one forward per turn", turn_by_turn)):
        run()  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        times[name] = best
    print(
        f"== teacher scoring speed: tiny teacher {TEACHER_SPEC.layers}x{TEACHER_SPEC.hidden}, vocab {vocab}, "
        f"{args.batch} trajectories x {args.turns} turns, {full['tokens_B_T'].shape[1]} tokens each, "
        f"{scored} response tokens, {torch.get_num_threads()} threads, best of {args.repeats} =="
    )
    for name, seconds in times.items():
        print(f"  {name:22s} {seconds:7.3f} s  {scored / seconds:9.0f} scored tokens/s")
    print(
        f"  ratio one-pass / per-turn: {times['one forward per turn'] / times['full one-pass']:.2f}x (goal >= 3x)"
    )


def memory_child(variant: str, tokens: int, chunk_size: int, device: str) -> dict:
    """Run one scoring variant and return its peak memory above the starting point (MiB)."""
    tokenizer = build_tokenizer(seed_words=())  # only its pad/eos ids are used here
    spec = TinyModelSpec(layers=1, hidden=64, heads=2, kv_heads=2, intermediate=128)
    student = build_tiny_model(spec, tokenizer, seed=0, vocab_size=STUDENT_ROWS).to(device)
    teacher = build_tiny_model(spec, tokenizer, seed=1, vocab_size=TEACHER_ROWS).to(device).eval()
    rows, per_row = 4, tokens // 4
    datum = Datum(
        list(range(per_row + 1)),
        [0] + [1] * per_row,
        [-1] + [0] * per_row,
        [0.0] + [-1.0] * per_row,
    )
    batch = collate([datum] * rows, tokenizer.pad_token_id)
    batch["tokens_B_T"] = torch.randint(
        0, STUDENT_ROWS, batch["tokens_B_T"].shape, generator=torch.Generator().manual_seed(0)
    )
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _proc_status()["VmRSS"]
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM (peak RSS) to the current RSS
    start = time.perf_counter()
    if variant == "naive":
        naive_kl_backward(student, teacher, batch)
    else:
        teacher_out = teacher_pass(teacher, batch, keep_vocab=STUDENT_ROWS, chunk_size=chunk_size)
        out = student_pass(
            student, model_parts(teacher)[1], batch, teacher_out, chunk_size=chunk_size
        )
        out.token_loss_B_T.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _proc_status()["VmHWM"] - base
    return {
        "variant": variant,
        "peak_mib": peak / 2**20,
        "seconds": time.perf_counter() - start,
        "scored": rows * per_row,
    }


def naive_kl_backward(student, teacher, batch) -> None:
    """The straightforward way: whole-batch logits from each model's forward, then the KL."""
    device = next(student.parameters()).device
    tokens, attention = batch["tokens_B_T"].to(device), batch["attention_mask_B_T"].to(device)
    mask = batch["response_mask_B_T"][:, 1:].to(device) > 0
    student_logp = torch.log_softmax(
        student(input_ids=tokens, attention_mask=attention).logits[:, :-1].float(), -1
    )
    with torch.no_grad():
        teacher_logits = teacher(input_ids=tokens, attention_mask=attention).logits[
            :, :-1, :STUDENT_ROWS
        ]
        teacher_logp = torch.log_softmax(teacher_logits.float(), -1)
        del teacher_logits
    kl = (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)
    (kl * mask).sum().backward()


def _proc_status() -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {
        key: int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024
        for key in ("VmRSS", "VmHWM")
    }


def memory(args: argparse.Namespace) -> None:
    results = {}
    for variant in ("chunked", "naive"):
        if args.device == "cuda":
            memory_child(variant, 256, args.chunk_size, "cuda")  # warm-up: CUDA context, kernels
            results[variant] = memory_child(variant, args.tokens, args.chunk_size, "cuda")
            torch.cuda.empty_cache()
            continue
        # A fresh process per variant: peak RSS is per process and never goes back down.
        command = [
            sys.executable,
            "-m",
            "harness.bench.scoring",
            "--memory-child",
            variant,
            "--tokens",
            str(args.tokens),
            "--chunk-size",
            str(args.chunk_size),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
    chunked, naive = results["chunked"], results["naive"]
    print(
        f"== scoring memory: vocab {STUDENT_ROWS:,} (teacher {TEACHER_ROWS:,} rows, truncated), "
        f"{chunked['scored']:,} response tokens, KL forward + backward, {args.device}, chunk {args.chunk_size} =="
    )
    for r in (chunked, naive):
        print(
            f"  {r['variant']:8s} peak {r['peak_mib']:9.0f} MiB above start, {r['seconds']:6.1f} s"
        )
    print(
        f"  ratio chunked / naive: {chunked['peak_mib'] / naive['peak_mib']:.3f}x (goal <= 0.35x)"
    )


def grouping(args: argparse.Namespace) -> None:
    from unittest import mock

    from methods import get as get_method

    tokenizer = build_tokenizer()
    teacher = build_tiny_model(TEACHER_SPEC, tokenizer, seed=0).eval().requires_grad_(False)
    student = build_tiny_model(STUDENT_SPEC, tokenizer, seed=1)
    vocab = len(tokenizer)
    rng = torch.Generator().manual_seed(0)
    turns = torch.randint(22, 31, (16,), generator=rng).tolist()
    batch = collate([trajectory(rng, vocab, t, 150, 8, 36) for t in turns], tokenizer.pad_token_id)
    lengths = batch["attention_mask_B_T"].sum(1)
    params = [p for p in student.parameters() if p.requires_grad]
    method, head = get_method("opd"), model_parts(teacher)[1]

    def step(group_tokens: int | None) -> tuple[list[float], float, torch.Tensor]:
        start = time.perf_counter()
        t_out = teacher_pass(teacher, batch, keep_vocab=vocab, group_tokens=group_tokens)
        scored = time.perf_counter()
        out = student_pass(student, head, batch, t_out, method=method, group_tokens=group_tokens)
        loss = out.token_loss_B_T.sum() / batch["response_mask_B_T"].sum()
        forward = time.perf_counter()
        student.zero_grad()
        loss.backward()
        done = time.perf_counter()
        return [scored - start, forward - scored, done - forward], loss.item(), torch.cat([p.grad.flatten() for p in params])

    def masked() -> tuple[list[float], float, torch.Tensor]:
        with mock.patch.object(scoring, "_right_padded", lambda attention: False):  # the mask, as before
            return step(None)

    variants = {"masked micro-batch": masked, "unmasked micro-batch": lambda: step(None),
                f"groups of {args.group_tokens}": lambda: step(args.group_tokens)}
    best: dict[str, list[float]] = {}
    results = {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, run in variants.items():
            parts, loss, grad = run()
            if name in results:
                best[name] = min(best.get(name, parts), parts, key=sum)
            results[name] = (loss, grad)
    print(f"== scoring groups: teacher {TEACHER_SPEC.layers}x{TEACHER_SPEC.hidden}, student {STUDENT_SPEC.layers}x"
          f"{STUDENT_SPEC.hidden}, 16 trajectories of {int(lengths.min())}-{int(lengths.max())} tokens, "
          f"{int(batch['response_mask_B_T'].sum())} response tokens, {torch.get_num_threads()} threads, "
          f"best of {args.repeats} ==")
    ref_loss, ref_grad = results["masked micro-batch"]
    for name, parts in best.items():
        loss, grad = results[name]
        print(f"  {name:22s} teacher {parts[0]:.2f} s, student forward {parts[1]:.2f} s, backward {parts[2]:.2f} s, "
              f"total {sum(parts):.2f} s; |d loss| {abs(loss - ref_loss):.1e}, max |d grad| "
              f"{(grad - ref_grad).abs().max():.1e}")
    total = {name: sum(parts) for name, parts in best.items()}
    print(f"  scoring speed-up, groups of {args.group_tokens} vs masked micro-batch: "
          f"{total['masked micro-batch'] / total[f'groups of {args.group_tokens}']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("speed", "memory", "grouping", "all"), default="all")
    parser.add_argument("--group-tokens", type=int, default=2048, help="positions per forward (grouping)")
    parser.add_argument("--batch", type=int, default=8, help="trajectories per batch (speed)")
    parser.add_argument("--turns", type=int, default=10, help="turns per trajectory (speed)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (speed)")
    parser.add_argument(
        "--tokens",
        type=int,
        default=4096,
        help="response tokens scored (memory); naive needs ~4 GiB per 1k",
    )
    parser.add_argument(
        "--chunk-size", type=int, default=512, help="positions per vocabulary chunk (memory)"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where the memory part runs"
    )
    parser.add_argument("--memory-child", choices=("chunked", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.tokens, args.chunk_size, "cpu")))
        return
    if args.part in ("speed", "all"):
        speed(args)
    if args.part in ("memory", "all"):
        memory(args)
    if args.part in ("grouping", "all"):
        grouping(args)


if __name__ == "__main__":
    main()
