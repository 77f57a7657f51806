"""Model loading, checkpoints, LoRA, the tokenizer check, and the tiny tokenizer and models."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from harness import models
from harness.default.tiny import (
    STUDENT_SPEC,
    TEACHER_SPEC,
    TinyModelSpec,
    build_tiny_model,
    build_tokenizer,
    save_tiny,
)
from harness.models import (
    LoraSettings,
    apply_lora,
    check_compatible,
    load_checkpoint,
    load_model,
    load_tokenizer,
    save_checkpoint,
)

CORPUS = [
    "-= Welcome to TextWorld, ALFRED! =-",
    "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1, "
    "a fridge 1, a microwave 1, a sinkbasin 1, and a stoveburner 2.",
    "Your task is to: put a clean apple in fridge.",
    "You arrive at countertop 1. On the countertop 1, you see a apple 1, a bread 2, and a mug 3.",
    "You pick up the apple 1 from the countertop 1.",
    "You clean the apple 1 using the sinkbasin 1.",
    "The fridge 1 is closed. Nothing happens.",
]
ACTIONS = [
    "go to countertop 1",
    "take apple 1 from countertop 1",
    "move apple 1 to fridge 1",
    "open fridge 1",
    "close drawer 12",
    "heat potato 2 with microwave 1",
    "cool mug 3 with fridge 1",
    "clean apple 1 with sinkbasin 1",
    "use desklamp 1",
    "slice bread 1 with knife 1",
    "examine alarmclock 2",
    "inventory",
    "look",
]
SMALL = TinyModelSpec(layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "teacher"
    save_tiny(build_tiny_model(SMALL, tokenizer, seed=0), tokenizer, path, spec=SMALL)
    return path


def sample_texts(n: int = 300) -> list[str]:
    """Game sentences, actions, shuffled word salads with unknown words, and chat renders."""
    rng = random.Random(0)
    words = " ".join(CORPUS + ACTIONS).split() + ["zebra", "Qux!", "99", "100", "\n", "(", ")"]
    texts = CORPUS + ACTIONS
    texts += [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(n)]
    return texts


# --- the word-level tokenizer --------------------------------------------------------------


def test_words_numbers_and_punctuation_are_whole_tokens(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(
        tokenizer.encode("Take apple 1 from sinkbasin 12, and use desklamp 3.")
    )
    assert pieces == [
        "take",
        "apple",
        "1",
        "from",
        "sinkbasin",
        "12",
        ",",
        "and",
        "use",
        "desklamp",
        "3",
        ".",
    ]
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("zebra")) == ["<|unk|>"]
    # Seeded from alfworld names and 0-99 even when the corpus never mentions them.
    for word in ("peppershaker", "tvstand", "toiletpaperhanger", "57", "99"):
        assert tokenizer.convert_ids_to_tokens(tokenizer.encode(word)) == [word]


def test_decoding_gives_actions_exactly_as_the_engine_expects(tokenizer):
    for action in ACTIONS:
        ids = tokenizer.encode(action)
        assert len(ids) == len(action.split())
        assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == action


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "user", "content": "Your task is to: put a clean apple in fridge."}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert (
        text
        == "<|im_start|>user\nYour task is to: put a clean apple in fridge.<|im_end|>\n<|im_start|>assistant\n"
    )
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(text))
    assert pieces[:3] == ["<|im_start|>", "user", "\n"] and pieces[-3:] == [
        "<|im_start|>",
        "assistant",
        "\n",
    ]
    assert "<|unk|>" not in pieces
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == 0


def test_tokenizer_save_load_round_trip_gives_identical_ids(tokenizer, tiny_dir):
    # The model's config.json sits next to the tokenizer: the transformers 5 trap of platform.md.
    loaded = [AutoTokenizer.from_pretrained(tiny_dir), load_tokenizer(tiny_dir)]
    texts = sample_texts()
    texts.append(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": CORPUS[1]}], tokenize=False, add_generation_prompt=True
        )
    )
    expected = [tokenizer.encode(t) for t in texts]
    for other in loaded:
        assert [other.encode(t) for t in texts] == expected
        assert (
            other.chat_template == tokenizer.chat_template
            and other.eos_token_id == tokenizer.eos_token_id
        )


def test_same_corpus_gives_same_ids():
    assert (
        build_tokenizer(CORPUS).get_vocab() == build_tokenizer(list(reversed(CORPUS))).get_vocab()
    )


# --- tiny models ---------------------------------------------------------------------------


def test_tiny_models_are_seeded_and_student_is_smaller(tokenizer):
    a, b, c = (build_tiny_model(SMALL, tokenizer, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(
        a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight
    )
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    build_tiny_model(SMALL, tokenizer, seed=5)
    assert torch.equal(torch.rand(1), before)  # building does not disturb the global RNG

    def body_params(spec: TinyModelSpec) -> int:
        return sum(
            p.numel()
            for n, p in build_tiny_model(spec, tokenizer).named_parameters()
            if "embed" not in n
        )

    assert body_params(STUDENT_SPEC) * 3.5 < body_params(TEACHER_SPEC)
    assert STUDENT_SPEC.layers == TEACHER_SPEC.layers == 4


def logits_of(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_saved_tiny_model_loads_back_like_a_hub_model(tokenizer, tiny_dir):
    ids = tokenizer.encode(CORPUS[1])
    original = build_tiny_model(SMALL, tokenizer, seed=0)
    loaded = load_model(tiny_dir)
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"  # 'auto' on CPU
    assert torch.equal(logits_of(loaded, ids), logits_of(original, ids))
    assert (tiny_dir / "tiny_spec.json").exists()
    assert load_model(tiny_dir, dtype="bfloat16").dtype == torch.bfloat16
    assert not [p for p in tiny_dir.parent.iterdir() if p.name.startswith(".")]  # no tmp dirs left


def test_save_checkpoint_replaces_atomically(tokenizer, tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(build_tiny_model(SMALL, tokenizer, seed=0), tokenizer, path)
    save_checkpoint(build_tiny_model(SMALL, tokenizer, seed=1), tokenizer, path)
    ids = tokenizer.encode(CORPUS[2])
    assert torch.equal(
        logits_of(load_model(path), ids), logits_of(build_tiny_model(SMALL, tokenizer, seed=1), ids)
    )
    # overwrite=False keeps the copy that is already there (a cache entry written by another job).
    save_checkpoint(build_tiny_model(SMALL, tokenizer, seed=2), tokenizer, path, overwrite=False)
    assert torch.equal(
        logits_of(load_model(path), ids), logits_of(build_tiny_model(SMALL, tokenizer, seed=1), ids)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_lora_adapter_round_trip(tokenizer, tiny_dir, tmp_path):
    model = apply_lora(
        load_model(tiny_dir), LoraSettings(rank=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))
    )  # no dropout: a trainable reload is in train mode, and its logits must equal these
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # lora_B starts at zero; make the adapter change the logits
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = tokenizer.encode(CORPUS[3])
    expected = logits_of(model, ids)
    assert not torch.allclose(expected, logits_of(load_model(tiny_dir), ids))
    save_checkpoint(model, tokenizer, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists() and not (
        tmp_path / "adapter" / "model.safetensors"
    ).exists()
    for loaded in (
        load_checkpoint(tmp_path / "adapter"),
        load_checkpoint(tmp_path / "adapter", base=tiny_dir, trainable=True),
    ):
        assert torch.equal(logits_of(loaded, ids), expected)
    loss = load_checkpoint(tmp_path / "adapter", trainable=True)(
        input_ids=torch.tensor([ids]), labels=torch.tensor([ids])
    ).loss
    loss.backward()  # a trainable reload takes gradients into the adapter


def test_lora_rejects_unknown_target_modules(tiny_dir):
    with pytest.raises(ValueError, match=r"not linear layers.*q_proj"):
        apply_lora(load_model(tiny_dir), LoraSettings(target_modules=("query_key_value",)))


# --- errors at the boundary ----------------------------------------------------------------


def test_missing_local_path_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*save_pretrained"):
        load_model(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(FileNotFoundError, match="not a directory written by save_checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_unknown_hub_name_offline_says_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        FileNotFoundError, match="not a local directory.*HF_HUB_OFFLINE=1.*local path"
    ):
        load_model("no-such-org/no-such-model")


def test_bad_dtype_and_device_are_refused(tiny_dir):
    with pytest.raises(ValueError, match="dtype='fp16'"):
        load_model(tiny_dir, dtype="fp16")
    with pytest.raises(ValueError, match="device='tpu'"):
        load_model(tiny_dir, device="tpu")


# --- tokenizer compatibility ---------------------------------------------------------------


def test_same_tokenizer_keeps_every_row(tokenizer):
    size = len(tokenizer)
    assert check_compatible(tokenizer, build_tokenizer(CORPUS), size, size) == size


def test_padded_teacher_embedding_is_cut_to_the_student(tokenizer):
    size = len(tokenizer)
    # The Qwen2.5 case: same tokens, the bigger model has 128 more (padding) rows.
    assert check_compatible(tokenizer, tokenizer, size + 64, size + 192) == size + 64


def test_different_vocabulary_is_a_clear_error(tokenizer):
    other = build_tokenizer(CORPUS + ["an aardvark appears"])  # ids shift from 'aardvark' on
    with pytest.raises(ValueError) as error:
        check_compatible(
            tokenizer,
            other,
            len(tokenizer),
            len(other),
            student_name="tiny-student",
            teacher_name="other-teacher",
        )
    message = str(error.value)
    assert "'tiny-student'" in message and "'other-teacher'" in message
    aardvark = other.convert_tokens_to_ids("aardvark")
    alarmclock = tokenizer.convert_tokens_to_ids("alarmclock")
    assert aardvark == alarmclock  # the new word took the id of the next one
    # The first differing tokens, by id, each with its student and teacher id.
    assert (
        f"first: 'aardvark': absent vs {aardvark}, 'alarmclock': {alarmclock} vs {alarmclock + 1},"
        in message
    )


def test_different_special_tokens_are_a_clear_error(tokenizer):
    other = build_tokenizer(CORPUS)
    other.eos_token = "<|endoftext|>"
    with pytest.raises(ValueError, match=r"eos_token differs: '<\|im_end\|>' vs '<\|endoftext\|>'"):
        check_compatible(tokenizer, other, len(tokenizer), len(other))


def test_teacher_with_fewer_rows_is_refused(tokenizer):
    with pytest.raises(ValueError, match="fewer logit rows"):
        check_compatible(tokenizer, tokenizer, len(tokenizer) + 8, len(tokenizer))


def test_preset_names_resolve_or_explain():
    assert models.SMOLLM2_PRESET in models.PRESETS
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.resolve_name("./not-a-preset-or-dir")
