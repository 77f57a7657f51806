"""The curriculum stage before the teacher's SFT (harness/default/curriculum.py), on the hand-written
episode of test_counterfactual and a real tiny model; and the stage inside a real tiny build."""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.agent.prompt import PromptSettings
from harness.default.curriculum import (
    CurriculumSettings,
    curriculum_data,
    first_token_accuracy,
    last_turn_verbs,
    search_examples,
    search_states,
    verb_only,
)
from tests.test_counterfactual import _episode

PROMPT = PromptSettings(show_admissible=False)


def _tokenizer():
    from harness.default.tiny import build_tokenizer

    episode = _episode()
    return build_tokenizer([episode["task"]] + [t["observation"] + " " + " ".join(t["admissible"])
                                                for t in episode["turns"]])


def test_search_examples_are_the_search_turns_and_their_edits():
    """Turns 1 (bed: a pillow) and 2 (desk: a pen, a cd) went on, turn 4 took the book from the open
    drawer; turn 0 lists the room, turn 3 a closed drawer, turns 5-6 are past the first take.
    With 3 edits: 2 inserts (bed, desk -> take a book) and 1 remove (drawer -> go to shelf 1)."""
    take, go_on = search_examples([_episode()], edits=0)
    assert [r["turns"][0]["action"] for r in take] == ["take book 3 from drawer 1"]
    assert [r["turns"][0]["action"] for r in go_on] == ["go to desk 1", "go to drawer 1"]
    assert all(len(r["turns"]) == 1 and r["task"] == "put some book on shelf." for r in take + go_on)
    take, go_on = search_examples([_episode()], edits=3)
    assert len(take) == 3 and len(go_on) == 3
    assert [r["turns"][0]["action"].split(" ")[:2] for r in take[1:]] == [["take", "book"]] * 2
    assert go_on[-1]["turns"][0]["action"] == "go to shelf 1"
    assert "book" not in go_on[-1]["turns"][0]["observation"]


def test_search_states_keep_the_prefix_and_only_the_last_turns_verb_is_scored():
    """The states are the prefixes ending at turns 2, 3 (went on) and 5 (took the book); in both
    layouts the one scored token is the last turn's first reply token: `go`, `go`, `take`."""
    take, go_on = search_states([_episode()], edits=0)
    assert [len(r["turns"]) for r in go_on + take] == [2, 3, 5]
    assert search_examples([_episode()], edits=0)[0][0]["turns"] == take[0]["turns"][-1:]
    tokenizer = _tokenizer()
    for layout in ("full", "window"):
        data = last_turn_verbs(go_on + take, tokenizer, PROMPT, layout)
        assert [sum(d.response_mask) for d in data] == [1, 1, 1]
        assert [tokenizer.convert_ids_to_tokens(d.token_ids[d.response_mask.index(1)]) for d in data] == ["go", "go", "take"]
        assert [d.turn_index[d.response_mask.index(1)] for d in data] == [1, 2, 4]


def test_the_data_is_balanced_and_a_go_on_example_trains_only_its_verb():
    """1 take and 2 go-on examples -> the take example (6 words and the end token trained) and one
    seeded go-on example (its first token, `go`, alone)."""
    tokenizer = _tokenizer()
    data = curriculum_data([_episode()], tokenizer, PROMPT, edits=0, seed=0)
    assert len(data) == 2
    take, go = data
    reply = [t for t, m in zip(take.token_ids, take.response_mask, strict=True) if m]
    assert tokenizer.decode(reply, skip_special_tokens=True) == "take book 3 from drawer 1"
    assert sum(take.response_mask) == 7  # take book 3 from drawer 1 + end of turn
    assert sum(go.response_mask) == 1
    assert tokenizer.convert_ids_to_tokens(go.token_ids[go.response_mask.index(1)]) == "go"
    assert curriculum_data([_episode()], tokenizer, PROMPT, edits=0, seed=0) == data  # seeded
    with pytest.raises(ValueError, match="curriculum needs search states of both kinds"):
        curriculum_data([{**_episode(), "turns": _episode()["turns"][:2]}], tokenizer, PROMPT, edits=0)


def test_verb_only_keeps_the_first_trained_token():
    from harness.agent.trajectory import Datum

    d = Datum([5, 6, 7, 8, 9], [0, 0, 1, 1, 1], [-1, -1, 0, 0, 0], [0.0] * 5)
    assert verb_only(d).response_mask == [0, 0, 1, 0, 0] and verb_only(d).token_ids == d.token_ids
    two = Datum([5, 6, 7, 8, 9], [0, 1, 1, 0, 1], [-1, 0, 0, -1, 1], [0.0] * 5)
    assert verb_only(two, 1).response_mask == [0, 0, 0, 0, 1] and verb_only(two).response_mask == [0, 1, 0, 0, 0]


def test_first_token_accuracy_of_a_model_that_learned_the_two_examples():
    """A one-layer tiny model trained on the 2 examples gets both first tokens right (1.0); with
    the go-on example's label changed to `take` it gets that one wrong: 1 of 2."""
    import torch

    from harness.default.sft import SFTSettings, train_sft
    from harness.default.tiny import TinyModelSpec, build_tiny_model

    tokenizer = _tokenizer()
    data = curriculum_data([_episode()], tokenizer, PROMPT, edits=0, seed=0)
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelSpec(layers=1, hidden=32, heads=4, kv_heads=4, intermediate=64), tokenizer, seed=0)
    train_sft(model, data, SFTSettings(steps=60, batch_size=2, lr=1e-2, warmup_steps=1), tokenizer.pad_token_id)
    assert first_token_accuracy(model, data, tokenizer.pad_token_id) == 1.0
    go = data[1]
    j = go.response_mask.index(1)
    relabelled = replace(go, token_ids=go.token_ids[:j] + [tokenizer.convert_tokens_to_ids("take")] + go.token_ids[j + 1:])
    assert first_token_accuracy(model, [data[0], relabelled], tokenizer.pad_token_id) == 0.5


def test_the_curriculum_knobs_reach_the_settings_and_key_only_when_active(tmp_path):
    from harness.default.prepare import TinySettings, _cache_key, _key_view
    from harness.run import tiny_settings
    from tests.hydra_utils import compose_config

    assert tiny_settings(compose_config([])).curriculum == CurriculumSettings()
    on = tiny_settings(compose_config(["model.tiny.curriculum_steps=600", "model.tiny.curriculum_mix=5",
                                       "model.tiny.curriculum_lr=0.002"]))
    assert on.curriculum == CurriculumSettings(steps=600, batch_size=64, lr=0.002, edits=8000, mix=5)
    (tmp_path / "suite.json").write_text('{"hash": "0123456789abcdef"}')

    def key(settings):
        return _cache_key(tmp_path, settings, PromptSettings(), "")

    assert "curriculum" not in _key_view(TinySettings())
    # inactive with other sizes: the same teacher as no stage at all
    assert key(TinySettings(curriculum=CurriculumSettings(batch_size=8))) == key(TinySettings())
    assert key(TinySettings(curriculum=CurriculumSettings(steps=1))) != key(TinySettings())
    assert key(TinySettings(curriculum=CurriculumSettings(mix=1))) != key(TinySettings())
    with pytest.raises(ValueError, match="curriculum_steps must be >= 0"):
        CurriculumSettings(steps=-1)


@pytest.mark.slow
def test_a_tiny_build_with_the_stage_trains_it_first_and_mixes_its_examples(small_suite, tmp_path):
    """On the real engine's demonstrations of the small suite: the stage runs before the teacher's
    SFT (its log line comes first), `mix` = 3 adds exactly 3 examples to the teacher's data, and
    the report holds both first-token figures."""
    from harness.default.prepare import TinySettings, prepare_tiny
    from harness.default.sft import SFTSettings
    from harness.default.tiny import TinyModelSpec

    def settings(**kw):
        return TinySettings(teacher=TinyModelSpec(layers=1, hidden=32, intermediate=64),
                            student=TinyModelSpec(layers=1, hidden=16, intermediate=32),
                            teacher_sft=SFTSettings(steps=2, batch_size=4), student_sft=SFTSettings(steps=1, batch_size=4),
                            student_demos=2, heldout_demos=2, renamed_copies=0, layout="full", **kw)

    logs: list[str] = []
    plain = prepare_tiny(small_suite, settings(), cache_root=tmp_path, log=logs.append)
    assert not any("curriculum" in m for m in logs)
    logs.clear()
    staged = prepare_tiny(small_suite, settings(curriculum=CurriculumSettings(steps=3, batch_size=4, mix=3)),
                          cache_root=tmp_path, log=logs.append)
    assert staged.teacher != plain.teacher
    stage = next(i for i, m in enumerate(logs) if m.startswith("prepare: teacher curriculum ("))
    assert stage < next(i for i, m in enumerate(logs) if m.startswith("prepare: teacher ("))
    report = staged.report
    assert report["teacher_examples"] == plain.report["teacher_examples"] + 3
    assert report["curriculum"]["examples"] >= 2
    for figures in (report["curriculum"]["heldout_search_first_token"], report["teacher"]["heldout_search_first_token"]):
        assert 0.0 <= figures["take"] <= 1.0 and 0.0 <= figures["go_on"] <= 1.0 and figures["take_examples"] > 0
