"""Which config differences make another run (finished runs stand, checkpoints resume)."""

from __future__ import annotations

from harness.config import Config, to_plain
from harness.run import config_changes


def _default() -> dict:
    return to_plain(Config)


def test_identical_and_result_neutral_configs_are_the_same_run():
    old = _default()
    assert config_changes(old, _default()) == []
    new = _default()
    new["env"]["num_workers"] = 14  # the same games, spread over more processes
    new["train"]["stop_after"] = 3
    assert config_changes(old, new) == []


def test_a_changed_knob_is_another_run():
    new = _default()
    new["train"]["lr"] = 1e-3
    new["model"]["tiny"]["student_demos"] = 1000
    assert config_changes(_default(), new) == ["model.tiny.student_demos", "train.lr"]


def test_a_knob_added_since_counts_only_when_set_off_its_default():
    old = _default()
    del old["train"]["weight_decay"]  # written before the schema had this knob
    assert config_changes(old, _default()) == []
    new = _default()
    new["train"]["weight_decay"] = 0.1
    assert config_changes(old, new) == ["train.weight_decay"]


def test_a_key_only_the_old_run_had_or_unknown_to_the_schema_is_a_change():
    old = _default()
    old["train"]["retired_knob"] = 1
    assert config_changes(old, _default()) == ["train.retired_knob"]
    new = _default()
    new["method"]["mystery"] = None  # not a schema key: no default to compare with
    assert config_changes(_default(), new) == ["method.mystery"]


def test_a_record_under_the_deprecated_names_is_the_same_run():
    old = _default()  # written before the rollout section: its knobs under prompt.* and train.*
    rollout = old.pop("rollout")
    old["prompt"]["max_new_tokens"], old["train"]["temperature"] = rollout["max_new_tokens"], 1.0
    old["train"]["top_p"] = 1.0
    assert config_changes(old, _default()) == []
    old["prompt"]["max_new_tokens"] = 8
    assert config_changes(old, _default()) == ["rollout.max_new_tokens"]
