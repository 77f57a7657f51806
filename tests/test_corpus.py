"""The tokenizer's corpus covers what the engine prints to a failing or idle policy, not only
what won demonstrations show (before, "Nothing happens." tokenized as `nothing <unk> .`)."""

from __future__ import annotations

from harness.default.tiny import build_tokenizer
from harness.envs import EnvPool, discover_games, interleave_task_types
from harness.envs.corpus import engine_texts


def test_engine_texts_hold_the_answers_to_failed_and_idle_commands(small_suite):
    games = interleave_task_types(discover_games(small_suite, "train").games)[:6]
    with EnvPool(num_workers=1, max_steps=12) as pool:
        texts = engine_texts(pool, games, steps=12, seed=0)
        again = engine_texts(pool, games, steps=12, seed=0)
    assert texts == again  # seeded: the same corpus, so the same tokenizer ids
    assert "Nothing happens." in texts  # a rejected command's answer
    # an idle command is played and answered (texts hold each command, then the engine's answer)
    answers = [texts[i + 1] for i, t in enumerate(texts[:-1]) if t in ("look", "inventory")]
    assert answers and any(a != "Nothing happens." for a in answers)
    assert any("carrying" in t for t in texts)  # inventory
    tokenizer = build_tokenizer(texts, seed_words=[])
    for sentence in ("Nothing happens.", *[t for t in texts if "carrying" in t][:1]):
        assert tokenizer.unk_token_id not in tokenizer(sentence)["input_ids"], sentence
    # demonstrations alone (the old corpus) leave those words unknown
    old = build_tokenizer([t for t in texts if t != "Nothing happens." and "carrying" not in t
                           and "happens" not in t], seed_words=[])
    assert old.unk_token_id in old("Nothing happens.")["input_ids"]
