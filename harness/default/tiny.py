"""The tiny default models, built offline: a word-level tokenizer and small Llama models.

Why word-level: a probe on this machine (platform.md) found that a tiny model learns the
goal-matching actions (`take apple 1 from countertop 1`, `use desklamp 2`) only when an object
name and its number are whole tokens; with BPE it stayed at 0-14% for 2,400 steps. So every
word, every number and every punctuation mark is one token, and the text is lowercased (the game
prints object names in lower case; "You"/"you" need not be two tokens).

Why Llama and not Qwen2 (the two differ only in Qwen2's q/k/v biases): transformers 5 loads the
tokenizer saved next to a `qwen2` config as `Qwen2Tokenizer` whatever tokenizer_config.json says
(qwen2 is on its list of repos with a "wrong" tokenizer class), and that class swaps in Qwen's
regex pre-tokenizer, which changes the ids. Next to a `llama` config, AutoTokenizer honours the
saved `TokenizersBackend` class and reads tokenizer.json as written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

PAD, UNK, IM_START, IM_END, EOT = (
    "<|pad|>",
    "<|unk|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
)
SPECIAL_TOKENS = (PAD, UNK, IM_START, IM_END, EOT)

# ChatML, as Qwen and SmolLM2 use it, so prompts look the same for tiny and real models.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The ALFWorld 0.4.x command words and the words of the chat frame.
COMMAND_WORDS = (
    "go to take from move open close heat cool clean with use slice examine inventory look help"
    " in on a an the system user assistant"
).split()

# One token per word / number, one per punctuation mark, and newlines kept (they mark lines of
# the history); other whitespace only separates.
_PRE_TOKEN_PATTERN = r"\n|\w+|[^\w\s]"


def alfworld_words() -> list[str]:
    """Object and receptacle names as the game prints them (`sinkbasin`, `desklamp`)."""
    # The engine's own names, from behind the harness/envs boundary.
    from harness.envs.games import object_and_receptacle_words

    return object_and_receptacle_words()


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(_PRE_TOKEN_PATTERN), behavior="removed", invert=True)


def build_tokenizer(
    corpus: Iterable[str] = (),
    *,
    extra_words: Iterable[str] = (),
    seed_words: Iterable[str] | None = None,
    model_max_length: int = 8192,
) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: seed words (default alfworld's names), 0-99, commands, extra and corpus words.

    `extra_words` are whole words to add (e.g. a judge prompt's labels); corpus texts are split
    by the tokenizer's own pre-tokenizer, so every piece they contain becomes a token.
    """
    normalizer = normalizers.Lowercase()
    pre_tokenizer = _pre_tokenizer()
    seed_words = alfworld_words() if seed_words is None else seed_words
    words = {w.lower() for w in seed_words} | {str(n) for n in range(100)} | set(COMMAND_WORDS)
    words |= {w.lower() for w in extra_words}
    for text in corpus:
        words.update(
            piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
        )
    words.add("\n")
    words -= set(SPECIAL_TOKENS)
    # Sorted, so the same corpus always gives the same ids.
    vocab = {token: i for i, token in enumerate(list(SPECIAL_TOKENS) + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    # Joins tokens with single spaces and re-attaches punctuation (" ." -> "."), so a decoded
    # action reads exactly as the engine expects it: `take apple 1 from countertop 1`.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=IM_END,  # generation stops at the end of the assistant's turn
        additional_special_tokens=[IM_START, EOT],
        model_max_length=model_max_length,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of a tiny Llama model; every field is a knob."""

    layers: int = 4
    hidden: int = 256
    heads: int = 4  # head dim = hidden / heads
    kv_heads: int = 4
    intermediate: int = 1024
    max_positions: int = 8192  # RoPE has no learned positions; this only bounds the context
    tie_embeddings: bool = True  # input and output embeddings shared: fewer parameters

    def __post_init__(self) -> None:
        if min(self.layers, self.hidden, self.heads, self.kv_heads, self.intermediate) < 1:
            raise ValueError(f"TinyModelSpec {self}: every size must be a positive integer")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"TinyModelSpec {self}: hidden must divide by heads and heads by kv_heads "
                             f"(e.g. hidden 256 with 4 or 8 heads)")


# The teacher is the size the probe found able to learn the goal-matching actions (4 x 256).
# The student keeps the depth (matching object names across the prompt needs several layers of
# attention) at half the width: about a quarter of the teacher's non-embedding parameters, so
# it can learn the task but starts clearly weaker.
TEACHER_SPEC = TinyModelSpec(layers=4, hidden=256, heads=4, kv_heads=4, intermediate=1024)
STUDENT_SPEC = TinyModelSpec(layers=4, hidden=128, heads=4, kv_heads=4, intermediate=512)


def tiny_config(
    spec: TinyModelSpec, tokenizer: PreTrainedTokenizerFast, vocab_size: int | None = None
) -> LlamaConfig:
    """A Llama config of the given size for this tokenizer (vocab_size may add padding rows)."""
    return LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        attention_bias=False,
    )


def build_tiny_model(
    spec: TinyModelSpec,
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
    *,
    vocab_size: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised fp32 Llama causal LM; the same seed gives the same weights."""
    config = tiny_config(spec, tokenizer, vocab_size)
    # fork_rng: seeding must not change the caller's global random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def save_tiny(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    path: str | Path,
    spec: TinyModelSpec | None = None,
) -> Path:
    """Save model + tokenizer atomically in HF format; `models.load_model(path)` loads it back."""
    from harness.models import save_checkpoint

    extra = {"tiny_spec.json": json.dumps(asdict(spec), indent=2) + "\n"} if spec else {}
    return save_checkpoint(model, tokenizer, path, extra_files=extra)
