"""One-pass scoring of whole trajectories by teacher and student, chunked over the vocabulary.

Shapes: B data, T positions (right-padded, harness.agent.trajectory.collate), N response tokens
of the whole batch, C a chunk of them, D hidden size, V the kept vocabulary.

The token at position j is predicted by the logits at j-1. Each model's body (the transformer
without the output head) runs ONCE over every datum; only the N hidden states that predict a
response token are gathered, and the V-wide head is applied to C of them at a time. A V-wide
fp32 logit row costs 0.6 MB at V=152k, so 4,096 tokens would need 2.5 GB per logits copy and a
KL builds several such copies; chunking bounds that by C (about 8 copies of C x V fp32 at
the peak: 2.1 GB at C=512, V=152k, against 14 GB unchunked for 4,096 tokens, measured by
`python -m harness.bench.scoring`). For the student, each chunk
(head -> logits, teacher head -> logits, token loss) runs under `torch.utils.checkpoint`: the
backward pass recomputes a chunk's logits instead of keeping all of them alive. The teacher pass
keeps its final hidden states at the response positions (N x D, small) so the student pass can
recompute the teacher's logits chunk by chunk.

Works for models whose logits are `output_embeddings(last_hidden_state)` (Llama, Qwen2/3,
Mistral, SmolLM); models with logit soft-capping or scaling are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from methods.estimators import reverse_kl, token_logprobs
from methods.method import Method

Batch = dict[str, Tensor]
REVERSE_KL = Method(name="reverse_kl")  # student_pass's default: full-vocabulary KL(S||T), temperature 1


@dataclass
class Positions:
    """Where the N scored tokens sit: datum `batch_N`, position `target_N` (>= 1)."""

    batch_N: Tensor
    target_N: Tensor
    shape: tuple[int, int]  # (B, T)

    def to_B_T(self, values_N: Tensor) -> Tensor:
        """Scatter per-token values into a zero (B, T) tensor (differentiable in values_N)."""
        out_B_T = values_N.new_zeros(self.shape)
        index = (self.batch_N.to(values_N.device), self.target_N.to(values_N.device))
        return out_B_T.index_put(index, values_N)


@dataclass
class TeacherOutput:
    """Teacher signals at the N response tokens; `hidden_N_D` lets the student pass recompute logits."""

    hidden_N_D: Tensor
    logp_N: Tensor  # log p_T of the sampled token
    top1_N: Tensor  # max_v p_T(v): the teacher's confidence
    positions: Positions

    @property
    def logp_B_T(self) -> Tensor:
        return self.positions.to_B_T(self.logp_N)

    @property
    def top1_B_T(self) -> Tensor:
        return self.positions.to_B_T(self.top1_N)


@dataclass
class StudentOutput:
    """Per-token student results, zero outside response tokens."""

    token_loss_B_T: Tensor  # the estimator's loss, with grad into the student
    logp_B_T: Tensor  # log p_S of the sampled token, with grad into the student (detach to log it)
    kl_B_T: Tensor | None  # full-vocabulary reverse KL(S || T) at temperature 1 (detached); None without teacher


def response_positions(batch: Batch, which: str = "response") -> Positions:
    """Positions of the tokens to score: sampled tokens ('response') or every real token ('all')."""
    attention_B_T = batch["attention_mask_B_T"].bool()
    if which == "response":
        mask_B_T = batch["response_mask_B_T"] > 0
        if (mask_B_T & ~attention_B_T).any():
            raise ValueError(
                "response_mask_B_T marks padding positions; build batches with trajectory.collate"
            )
    elif which == "all":
        mask_B_T = attention_B_T.clone()
    else:
        raise ValueError(f"which={which!r}: expected 'response' or 'all'")
    if which == "response" and mask_B_T[:, 0].any():
        raise ValueError("a response token at position 0 has no context to be predicted from")
    mask_B_T[:, 0] = False
    batch_N, target_N = mask_B_T.nonzero(as_tuple=True)
    return Positions(batch_N, target_N, tuple(mask_B_T.shape))


def model_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(body, head) of a causal LM, peft-wrapped or not; logits = head(body(...).last_hidden_state)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = base.config
    for attribute in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, attribute, None) not in (None, 1.0):
            raise NotImplementedError(
                f"{type(base).__name__} transforms its logits ({attribute}); chunked scoring assumes "
                "logits = lm_head(last hidden state)"
            )
    return base.get_decoder(), base.get_output_embeddings()


def _right_padded(attention_B_L: Tensor) -> bool:
    """Every row is its real tokens, then padding only (trajectory.collate's layout)."""
    return bool((attention_B_L[:, 1:] <= attention_B_L[:, :-1]).all())


def row_groups(lengths_B: list[int], group_tokens: int | None) -> list[list[int]]:
    """The rows with length > 0, in length order, grouped so that rows x longest <= group_tokens
    (a longer row forms a group alone); None: all of them in one group."""
    if group_tokens is not None and group_tokens < 1:
        raise ValueError(f"group_tokens (train.scoring_tokens) must be >= 1 or null, got {group_tokens}")
    order = sorted((b for b, n in enumerate(lengths_B) if n > 0), key=lambda b: lengths_B[b])
    if group_tokens is None:
        return [order] if order else []
    groups: list[list[int]] = []
    for b in order:  # ascending lengths: the row joining a group is its longest
        if groups and (len(groups[-1]) + 1) * lengths_B[b] <= group_tokens:
            groups[-1].append(b)
        else:
            groups.append([b])
    return groups


def context_hidden(body: torch.nn.Module, batch: Batch, positions: Positions,
                   group_tokens: int | None = None) -> Tensor:
    """Final hidden states at the positions that predict each scored token: (N, D).

    Positions after a row's last scored token cannot influence it (causal attention), so each row
    runs only up to there. In a right-padded batch no real token can attend to a pad either, so
    the rows run without a padding mask (SDPA then takes its causal kernel instead of a masked
    one: about 1.5x on CPU, same values) and in groups of at most `group_tokens` positions
    (row_groups): less padding per forward. Any other mask runs the whole batch with it.
    """
    device = next(body.parameters()).device
    batch_N, target_N = positions.batch_N, positions.target_N
    length = int(target_N.max()) if len(target_N) else 1
    tokens_B_L = batch["tokens_B_T"][:, :length]
    attention_B_L = batch["attention_mask_B_T"][:, :length]
    if not len(target_N) or not _right_padded(attention_B_L):
        hidden_B_L_D = body(input_ids=tokens_B_L.to(device), attention_mask=attention_B_L.to(device),
                            use_cache=False).last_hidden_state
        return hidden_B_L_D[batch_N.to(device), target_N.to(device) - 1]
    need_B = torch.zeros(positions.shape[0], dtype=torch.long).scatter_reduce(0, batch_N.cpu(), target_N.cpu(), "amax")
    groups = row_groups(need_B.tolist(), group_tokens)
    hidden_B_L_D = None
    for rows in groups:
        hidden_G_L_D = body(input_ids=tokens_B_L[rows, : int(need_B[rows].max())].to(device),
                            use_cache=False).last_hidden_state
        if hidden_B_L_D is None:  # rows without scored positions stay zero and are never read
            hidden_B_L_D = hidden_G_L_D.new_zeros((*tokens_B_L.shape, hidden_G_L_D.shape[-1]))
        hidden_B_L_D[rows, : hidden_G_L_D.shape[1]] = hidden_G_L_D
    return hidden_B_L_D[batch_N.to(device), target_N.to(device) - 1]


def _chunks(n: int, chunk_size: int) -> list[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [slice(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def _sampled_ids(batch: Batch, positions: Positions, device: torch.device) -> Tensor:
    return batch["tokens_B_T"][positions.batch_N, positions.target_N].to(device)


@torch.no_grad()
def teacher_pass(
    teacher, batch: Batch, *, keep_vocab: int, chunk_size: int = 512, temperature: float = 1.0,
    group_tokens: int | None = None,
) -> TeacherOutput:
    """Teacher log p of each sampled token and top-1 probability, over its first `keep_vocab` rows
    (`group_tokens`: positions per body forward, context_hidden)."""
    positions = response_positions(batch)
    body, head = model_parts(teacher)
    hidden_N_D = context_hidden(body, batch, positions, group_tokens)
    sampled_N = _sampled_ids(batch, positions, hidden_N_D.device)
    if len(sampled_N) and int(sampled_N.max()) >= keep_vocab:
        raise ValueError(
            f"a sampled token id {int(sampled_N.max())} is beyond the kept vocabulary ({keep_vocab})"
        )
    logp, top1 = [], []
    for part in _chunks(len(sampled_N), chunk_size):
        logp_C_V = F.log_softmax(
            head(hidden_N_D[part])[:, :keep_vocab].float() / temperature, dim=-1
        )
        logp.append(logp_C_V.gather(1, sampled_N[part, None]).squeeze(1))
        top1.append(logp_C_V.max(dim=-1).values.exp())
    empty = hidden_N_D.new_zeros(0, dtype=torch.float32)
    return TeacherOutput(
        hidden_N_D,
        torch.cat(logp) if logp else empty,
        torch.cat(top1) if top1 else empty,
        positions,
    )


def _student_chunk(
    student_hidden_C_D: Tensor,
    teacher_hidden_C_D: Tensor | None,
    sampled_C: Tensor,
    old_logp_C: Tensor,
    *,
    head: torch.nn.Module,
    teacher_head: torch.nn.Module | None,
    method: Method,
) -> tuple[Tensor, Tensor, Tensor | None]:
    student_logits_C_V = head(student_hidden_C_D)
    teacher_logits_C_V = None
    if teacher_hidden_C_D is not None:
        with torch.no_grad():
            # Cut the teacher's padding rows to the student's size (models.check_compatible).
            teacher_logits_C_V = teacher_head(teacher_hidden_C_D)[:, : student_logits_C_V.shape[-1]]
    loss_C = method.token_loss(student_logits_C_V, teacher_logits_C_V, sampled_C, old_logp_C)
    logp_C = token_logprobs(student_logits_C_V, sampled_C)  # with grad: atod's RL term backpropagates it
    with torch.no_grad():
        kl_C = None
        if teacher_logits_C_V is not None:
            same = method.estimator == "full_kl" and method.temperature == 1.0  # the loss is this KL
            kl_C = loss_C.detach() if same else reverse_kl(student_logits_C_V, teacher_logits_C_V)
    return loss_C, logp_C, kl_C


def _per_chunk(run_chunk, n: int, chunk_size: int, *args_N) -> list[tuple]:
    """`run_chunk` on C of the N rows of every tensor in `args_N` at a time (None passes as None).

    With grad, each chunk runs under checkpointing: only its inputs are kept for backward, which
    recomputes its V-wide logits; otherwise every chunk's logits would stay alive until backward.
    """
    outs = []
    for part in _chunks(n, chunk_size):
        args = [None if a is None else a[part] for a in args_N]
        out = checkpoint(run_chunk, *args, use_reentrant=False) if torch.is_grad_enabled() else run_chunk(*args)
        outs.append(out if isinstance(out, tuple) else (out,))
    return outs


def student_pass(
    student,
    teacher_head: torch.nn.Module | None,
    batch: Batch,
    teacher_out: TeacherOutput | None,
    *,
    method: Method = REVERSE_KL,
    chunk_size: int = 512,
    group_tokens: int | None = None,
) -> StudentOutput:
    """Student forward with grad: `method`'s per-token loss (its estimator and knobs), chunk by chunk.

    `teacher_head` is `model_parts(teacher)[1]` and `teacher_out` comes from `teacher_pass` on the
    same batch; both None for a method without teacher (sft's nll, then `kl_B_T` is None).
    Call `.backward()` on a reduction of `token_loss_B_T`.
    """
    positions = teacher_out.positions if teacher_out is not None else response_positions(batch)
    body, head = model_parts(student)
    hidden_N_D = context_hidden(body, batch, positions, group_tokens)
    device = hidden_N_D.device
    sampled_N = _sampled_ids(batch, positions, device)
    old_logp_N = batch["old_logp_B_T"][positions.batch_N, positions.target_N].to(device)
    teacher_hidden_N_D = teacher_out.hidden_N_D.to(device) if teacher_out is not None else None
    run_chunk = partial(_student_chunk, head=head, teacher_head=teacher_head, method=method)
    outs = _per_chunk(run_chunk, len(sampled_N), chunk_size, hidden_N_D, teacher_hidden_N_D, sampled_N, old_logp_N)
    if not outs:
        zero_B_T = hidden_N_D.new_zeros(positions.shape, dtype=torch.float32)
        return StudentOutput(zero_B_T + 0.0 * hidden_N_D.sum(), zero_B_T, zero_B_T if teacher_out is not None else None)
    losses, logps, kls = zip(*outs, strict=True)
    return StudentOutput(
        positions.to_B_T(torch.cat(losses)),
        positions.to_B_T(torch.cat(logps)),
        positions.to_B_T(torch.cat(kls)) if teacher_out is not None else None,
    )


def _logprob_chunk(
    hidden_C_D: Tensor, targets_C: Tensor, *, head: torch.nn.Module, keep_vocab: int | None
) -> Tensor:
    return token_logprobs(head(hidden_C_D)[:, :keep_vocab], targets_C)


def sequence_logprobs(
    model,
    batch: Batch,
    *,
    which: str = "response",
    chunk_size: int = 512,
    keep_vocab: int | None = None,
    group_tokens: int | None = None,
) -> Tensor:
    """log p of each token under `model` (B, T), zero elsewhere; with grad when grad is enabled.

    which='response' scores the sampled tokens (rollout checks, SFT on responses), 'all' every
    real token after the first (language-model NLL).
    """
    positions = response_positions(batch, which)
    body, head = model_parts(model)
    hidden_N_D = context_hidden(body, batch, positions, group_tokens)
    targets_N = _sampled_ids(batch, positions, hidden_N_D.device)
    run_chunk = partial(_logprob_chunk, head=head, keep_vocab=keep_vocab)
    parts = [out[0] for out in _per_chunk(run_chunk, len(targets_N), chunk_size, hidden_N_D, targets_N)]
    if not parts:
        return hidden_N_D.new_zeros(positions.shape, dtype=torch.float32) + 0.0 * hidden_N_D.sum()
    return positions.to_B_T(torch.cat(parts))
