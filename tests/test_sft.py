"""SFT data builders: recovery data keeps what was executed in the history and trains the expert's move."""

from __future__ import annotations

import torch

from harness.agent.prompt import PromptSettings
from harness.default.judge_data import NoisyEpisode, NoisyTurn
from harness.default.sft import SFTSettings, action_accuracy, recovery_data, train_sft
from harness.default.tiny import TinyModelSpec, build_tiny_model, build_tokenizer

ADMISSIBLE = ["go to cabinet 1", "go to fridge 1", "look"]
CORPUS = ["your task is to : put a mug in fridge . observation : action : admissible actions : you have taken "
          "steps step , . the last nothing happens dance cabinet is closed you are in middle of a room"]


def _episode() -> NoisyEpisode:
    return NoisyEpisode("g", "put a mug in fridge.", "pick_and_place_simple", turns=[
        # the noisy policy tried an invalid command where the expert would have gone to the cabinet
        NoisyTurn("You are in the middle of a room.", "dance", "Nothing happens.", "go to cabinet 1", "invalid", 2,
                  ADMISSIBLE),
        NoisyTurn("Nothing happens.", "go to cabinet 1", "The cabinet 1 is closed.", "go to cabinet 1", "expert", 0,
                  ADMISSIBLE),
    ])


def test_recovery_data_history_is_executed_and_target_is_expert():
    tokenizer = build_tokenizer(CORPUS, seed_words=[])
    data = recovery_data([_episode()], tokenizer, PromptSettings(history=2))
    assert len(data) == 2
    second = data[1]
    prompt = tokenizer.decode([i for i, m in zip(second.token_ids, second.response_mask, strict=True) if not m])
    prompt = " ".join(prompt.replace(" :", ":").split())
    reply = tokenizer.decode([i for i, m in zip(second.token_ids, second.response_mask, strict=True) if m],
                             skip_special_tokens=True)
    assert "<|unk|>" not in prompt
    assert "action: dance" in prompt  # the history holds the command really executed
    assert "your task is to: put a mug in fridge." in prompt
    assert reply == "go to cabinet 1"  # the expert's recovery
    assert second.turn_index[-1] == 1 and sum(second.response_mask) == 5  # go to cabinet 1 + end of turn


def test_sft_learns_a_fixed_reply():
    # a model trained on one (prompt, reply) pair reproduces it exactly: the loop and metric agree
    tokenizer = build_tokenizer(CORPUS, seed_words=[])
    data = recovery_data([_episode()], tokenizer, PromptSettings(history=2))[:1]
    model = build_tiny_model(TinyModelSpec(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64), tokenizer)
    before = action_accuracy(model, data, tokenizer, tokenizer.pad_token_id)
    losses = train_sft(model, data, SFTSettings(steps=60, batch_size=1, lr=3e-3, warmup_steps=5), tokenizer.pad_token_id)
    after = action_accuracy(model, data, tokenizer, tokenizer.pad_token_id)
    assert before["go"] == 0.0 and after == {"go": 1.0, "all": 1.0}
    assert losses[-1] < 0.25 * losses[0] and torch.isfinite(torch.tensor(losses)).all()


def test_full_layout_recovery_trains_only_the_expert_turns():
    # one sequence as played: the invalid "dance" stays as context (mask 0), the recovery is trained
    tokenizer = build_tokenizer(CORPUS, seed_words=[])
    (datum,) = recovery_data([_episode()], tokenizer, PromptSettings(show_admissible=False), layout="full")
    trained = [t for t, m in zip(datum.token_ids, datum.response_mask, strict=True) if m]
    assert tokenizer.decode(trained, skip_special_tokens=True) == "go to cabinet 1"
    assert len(trained) == 5 and set(i for i, m in zip(datum.turn_index, datum.response_mask, strict=True) if m) == {1}
    assert "dance" in tokenizer.decode(datum.token_ids)  # executed, in the context


def test_action_accuracy_counts_each_turn_of_a_full_datum():
    # an untrained model is wrong on both turns; a full datum with two trained turns counts twice
    tokenizer = build_tokenizer(CORPUS, seed_words=[])
    episode = _episode()
    episode.turns[0] = NoisyTurn("You are in the middle of a room.", "look", "Nothing happens.", "look", "expert", 0,
                                 ADMISSIBLE)
    (datum,) = recovery_data([episode], tokenizer, PromptSettings(show_admissible=False), layout="full")
    model = build_tiny_model(TinyModelSpec(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64), tokenizer)
    train_sft(model, [datum], SFTSettings(steps=80, batch_size=1, lr=3e-3, warmup_steps=5), tokenizer.pad_token_id)
    assert action_accuracy(model, [datum], tokenizer, tokenizer.pad_token_id) == {"go": 1.0, "look": 1.0, "all": 1.0}


def test_batch_order_buckets_by_length_and_keeps_every_example_once():
    import random

    from harness.default.sft import batch_order

    lengths = [5, 1, 9, 3, 7, 2, 8, 4]  # example i has length lengths[i]
    plain = batch_order(lengths, batch_size=2, bucket=1, rng=random.Random(0))
    assert sorted(i for b in plain for i in b) == list(range(8)) and all(len(b) == 2 for b in plain)
    # one window of 2 x 2 = 4 examples per bucket: sorted within the window, then cut in pairs
    bucketed = batch_order(lengths, batch_size=2, bucket=2, rng=random.Random(0))
    assert sorted(i for b in bucketed for i in b) == list(range(8))
    order = random.Random(0).sample(range(8), 8)  # the same shuffle batch_order starts from
    for start in (0, 4):
        window = sorted(order[start:start + 4], key=lambda i: lengths[i])
        assert sorted(bucketed[start // 2: start // 2 + 2]) == sorted([window[:2], window[2:]])
    # padding: each pair pads to its longer member
    def padding(batches):
        return sum(max(lengths[i] for i in b) * 2 - sum(lengths[i] for i in b) for b in batches)

    assert padding(bucketed) < padding(plain)


def test_train_sft_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    # 6 steps in one go == 4 steps, a "crash", and a resumed call (checkpoints every 2 steps)
    tokenizer = build_tokenizer(CORPUS, seed_words=[])
    data = recovery_data([_episode()], tokenizer, PromptSettings(history=2)) * 3
    spec = TinyModelSpec(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64)
    settings = SFTSettings(steps=6, batch_size=2, lr=3e-3, warmup_steps=2, bucket=2, checkpoint_every=2)
    whole = build_tiny_model(spec, tokenizer)
    whole_losses = train_sft(whole, data, settings, tokenizer.pad_token_id)

    class Crash(Exception):
        pass

    def crash_after_step_4(record):
        if record.get("step") == 4:
            raise Crash

    ckpt = tmp_path / "sft.pt"
    broken = build_tiny_model(spec, tokenizer)
    try:
        train_sft(broken, data, settings, tokenizer.pad_token_id, log=crash_after_step_4, checkpoint=ckpt)
    except Crash:
        pass
    assert torch.load(ckpt, weights_only=False)["step"] == 4
    resumed = build_tiny_model(spec, tokenizer)  # fresh weights: everything comes from the file
    events = []
    losses = train_sft(resumed, data, settings, tokenizer.pad_token_id, log=events.append, checkpoint=ckpt)
    assert events[0] == {"resumed": 4} and len(losses) == 6
    assert losses == whole_losses
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    other = SFTSettings(steps=7, batch_size=2, lr=3e-3, warmup_steps=2, bucket=2, checkpoint_every=2)
    try:
        train_sft(build_tiny_model(spec, tokenizer), data, other, tokenizer.pad_token_id, checkpoint=ckpt)
    except ValueError as error:
        assert "other settings" in str(error)
    else:
        raise AssertionError("a checkpoint of other settings must be refused")
