"""The judge's label words on real tokenizers: their first tokens, read where the judge reads them
(the reply to a prompt made from the template), must be distinct; checked at start-up."""

from __future__ import annotations

import json

import pytest

from harness.default.tiny import build_tokenizer
from harness.loop.judge import JudgeSettings, check_label_tokens, judge_vocabulary
from harness.run import run
from tests.hydra_utils import compose_config

CORPUS = ["Your task is to: put a clean mug in coffeemachine.", "You arrive at countertop 1. Nothing happens."]


@pytest.fixture(scope="module")
def smollm2_tokenizer(gguf):
    from harness.models import SMOLLM2_PRESET, load_tokenizer

    return load_tokenizer(SMOLLM2_PRESET)


def test_tiny_tokenizer_labels_are_their_own_words():
    tokenizer = build_tokenizer(CORPUS, extra_words=judge_vocabulary(JudgeSettings()))
    ids = check_label_tokens(tokenizer, JudgeSettings())
    assert tokenizer.convert_ids_to_tokens(ids) == ["skip", "weak", "strong"]
    with pytest.raises(ValueError, match=r"start with the tokens \['skip', 'skip', 'strong'\]"):
        check_label_tokens(tokenizer, JudgeSettings(labels=("Skip", "skip", "Strong")))  # it lowercases


@pytest.mark.llm
def test_smollm2_reads_skip_we_strong(smollm2_tokenizer):
    ids = check_label_tokens(smollm2_tokenizer, JudgeSettings())
    # BPE: "Skip" and "Strong" are whole tokens; "Weak" at the reply's start is "We" + "ak"
    assert ids == [38351, 1882, 37937]
    assert smollm2_tokenizer.convert_ids_to_tokens(ids) == ["Skip", "We", "Strong"]
    assert smollm2_tokenizer.convert_ids_to_tokens(check_label_tokens(
        smollm2_tokenizer, JudgeSettings(labels=("Skip", "Skipping", "Strong")))) == ["Skip", "Sk", "Strong"]
    with pytest.raises(ValueError, match=r"start with the tokens \['Skip', 'Strong', 'Strong'\] \(ids \[38351, "
                                         r"37937, 37937\]\).*judge.labels"):
        check_label_tokens(smollm2_tokenizer, JudgeSettings(labels=("Skip", "Strong", "Stronger")))


@pytest.mark.slow
def test_labels_the_teacher_cannot_read_stop_the_run_before_any_game(tmp_path):
    # the smoke pair without judge examples has no judge words in its word-level vocabulary
    overrides = ["experiment=smoke", "model.tiny.judge_examples=0", "method=sage", "eval.eval_initial=true"]
    with pytest.raises(ValueError, match=r"judge label 'Skip' has no token of its own in tokenizer"):
        run(compose_config(overrides), tmp_path)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "failed" and "labels ['Skip', 'Weak', 'Strong']" in record["error"]
    assert not (tmp_path / "eval_initial_episodes.jsonl").exists() and not (tmp_path / "metrics.jsonl").exists()
