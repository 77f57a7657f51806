"""The prepare stage's data helpers: object-renamed demonstration copies, task-type interleaving,
cache keys, the student's data from the teacher's episodes."""

from __future__ import annotations

import pytest

from harness.default.prepare import renamed_copies
from harness.envs import GameInfo, interleave_task_types


def _demo(task: str, obj: str, other: str) -> dict:
    return {"task": task, "turns": [
        {"observation": f"On the desk 1, you see a {obj} 2, and a {other} 1.",
         "admissible": ["go to bed 1", f"take {obj} 2 from desk 1", f"take {other} 1 from desk 1"],
         "action": f"take {obj} 2 from desk 1", "feedback": f"You pick up the {obj} 2 from the desk 1."},
        {"observation": "You arrive at bed 1.", "admissible": ["go to desk 1", f"move {obj} 2 to bed 1"],
         "action": f"move {obj} 2 to bed 1", "feedback": f"You move the {obj} 2 to the bed 1."},
    ]}


def test_renamed_copies_permute_objects_and_numbers_consistently():
    demos = [_demo("put a mug in bed.", "mug", "pen"), _demo("put a pen in bed.", "pen", "apple")]
    copies = renamed_copies(demos, copies=2, seed=0)
    assert len(copies) == 4 and all(c["renamed"] for c in copies)
    assert renamed_copies(demos, copies=2, seed=0) == copies  # deterministic
    for copy in copies:
        take = copy["turns"][0]["action"].split()  # take <kind> <n> from desk 1
        kind, number = take[1], take[2]
        assert kind in {"mug", "pen", "apple"} and number in {str(n) for n in range(1, 10)}
        # the task names the renamed object, the places keep their names and numbers
        assert copy["task"] == f"put a {kind} in bed."
        assert take[3:] == ["from", "desk", "1"]
        assert copy["turns"][1]["action"] == f"move {kind} {number} to bed 1"
        assert copy["turns"][0]["feedback"] == f"You pick up the {kind} {number} from the desk 1."
        # the other object got another name: the permutation is a bijection
        other = copy["turns"][0]["admissible"][2].split()[1]
        assert other != kind
        assert f"a {kind} {number}, and a {other} " in copy["turns"][0]["observation"]
        assert copy["turns"][0]["admissible"][0] == "go to bed 1"
    # over 4 copies, at least one name or number changed (3 objects, 9 numbers: no fixed point everywhere)
    assert any(c["turns"][0]["action"] != s["turns"][0]["action"] for c, s in zip(copies, demos * 2, strict=True))


def test_interleave_task_types_round_robin():
    games = [GameInfo(f"{t}-{i}", t, "train", {}) for t, n in (("a", 3), ("b", 1), ("c", 2)) for i in range(n)]
    order = [g.gamefile for g in interleave_task_types(games)]
    assert order == ["a-0", "b-0", "c-0", "a-1", "c-1", "a-2"]


def test_renamed_copies_keep_lamps_unless_asked():
    demo = _demo("look at mug under the desklamp.", "mug", "pen")
    demo["turns"][1] = {"observation": "On the desk 1, you see a desklamp 1.", "admissible": ["use desklamp 1"],
                        "action": "use desklamp 1", "feedback": "You turn on the desklamp 1."}
    kept = renamed_copies([demo], copies=3, seed=1)
    assert all(c["turns"][1]["action"] == "use desklamp 1" and c["task"].endswith("under the desklamp.") for c in kept)
    assert {c["turns"][0]["action"].split()[1] for c in kept} <= {"mug", "pen"}
    renamed = renamed_copies([demo], copies=3, seed=1, rename_lamps=True)
    lamps = {c["turns"][1]["action"].split()[1] for c in renamed}
    assert lamps <= {"mug", "pen", "desklamp"} and lamps != {"desklamp"}


def test_suite_id_reads_the_generated_hash_or_hashes_the_path(tmp_path):
    from harness.default.prepare import _suite_id

    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "suite.json").write_text('{"hash": "135f51c09b220bf8"}')
    assert _suite_id(tmp_path / "gen") == "135f51c09b220bf8"
    real = tmp_path / "alfworld"  # a real download has no suite.json
    real.mkdir()
    assert len(_suite_id(real)) == 16 and _suite_id(real) != _suite_id(tmp_path)


def test_a_new_student_setting_reuses_the_cached_teacher(small_suite, tmp_path):
    """Two cached stages: changing only the student's warm start builds a new student next to the
    same teacher (teacher SFT is the expensive part); changing the teacher rebuilds both."""
    from harness.default.prepare import TinySettings, prepare_tiny
    from harness.default.sft import SFTSettings
    from harness.default.tiny import TinyModelSpec

    def settings(**kw):
        base = dict(teacher=TinyModelSpec(layers=1, hidden=32, intermediate=64),
                    student=TinyModelSpec(layers=1, hidden=16, intermediate=32),
                    teacher_sft=SFTSettings(steps=2, batch_size=4), student_sft=SFTSettings(steps=1, batch_size=4),
                    student_demos=2, heldout_demos=2, renamed_copies=0, layout="full")  # one datum per episode
        return TinySettings(**{**base, **kw})

    logs: list[str] = []
    first = prepare_tiny(small_suite, settings(), cache_root=tmp_path, log=logs.append)
    assert sum(m.startswith("prepare: teacher (") for m in logs) == 1
    assert sum(m.startswith("prepare: student (") for m in logs) == 1
    assert first.teacher.parent.name.startswith("teacher-") and first.student.parent == first.root
    assert first.report["student"]["sft_examples"] == 2 and "teacher" in first.report

    logs.clear()
    again = prepare_tiny(small_suite, settings(), cache_root=tmp_path, log=logs.append)
    assert logs == [] and again == first  # both cached

    more = prepare_tiny(small_suite, settings(student_demos=3), cache_root=tmp_path, log=logs.append)
    assert [m.split(" (")[0] for m in logs if " (" in m] == ["prepare: student"]  # the teacher is reused
    assert more.teacher == first.teacher and more.student != first.student
    assert more.report["student"]["sft_examples"] == 3

    logs.clear()
    other = prepare_tiny(small_suite, settings(teacher_sft=SFTSettings(steps=3, batch_size=4)),
                         cache_root=tmp_path, log=logs.append)
    assert other.teacher != first.teacher and other.student != first.student
    assert sum(m.startswith("prepare: teacher (") for m in logs) == 1
    assert not list(tmp_path.glob(".*.tmp")), "a temporary dir was left"


def test_new_knobs_at_their_legacy_value_keep_every_cache_key(tmp_path):
    """Knobs added after pairs were shipped leave the keys alone at the value that reproduces those
    builds; at another value they change the teacher's key. How often a build saves never does."""
    from dataclasses import asdict

    from harness.agent.prompt import PromptSettings
    from harness.default.prepare import TinySettings, _cache_key, _key_view
    from harness.default.sft import SFTSettings

    (tmp_path / "suite.json").write_text('{"hash": "0123456789abcdef"}')
    legacy = TinySettings()
    view = _key_view(legacy)
    assert "engine_corpus" not in view and "bucket" not in view["teacher_sft"]
    assert "checkpoint_every" not in view["student_sft"]
    assert set(asdict(legacy)) - set(view) == {"engine_corpus", "student_source", "counterfactuals", "curriculum"}

    def key(settings):
        return _cache_key(tmp_path, settings, PromptSettings(), "")

    saves_often = TinySettings(teacher_sft=SFTSettings(steps=700, batch_size=16, lr=5e-4, checkpoint_every=5))
    assert key(saves_often) == key(legacy)
    bucketed = TinySettings(teacher_sft=SFTSettings(steps=700, batch_size=16, lr=5e-4, bucket=16))
    assert key(bucketed) != key(legacy) and key(TinySettings(engine_corpus=True)) != key(legacy)


def test_prompt_knob_at_its_legacy_value_keeps_the_teacher_key(tmp_path):
    """`prompt.admissible_scope` came after the default pair shipped: at 'all' the teacher's key
    is the hash of the prompt as it was before the knob (the field absent); at 'interactions' the
    teacher is another one."""
    from dataclasses import asdict

    from harness.agent.prompt import PromptSettings
    from harness.default.prepare import (
        DAGGER_FIELDS,
        PREPARE_VERSION,
        STUDENT_FIELDS,
        TinySettings,
        _cache_key,
        _hash,
        _key_view,
    )

    (tmp_path / "suite.json").write_text('{"hash": "0123456789abcdef"}')
    settings, prompt = TinySettings(), PromptSettings(show_admissible=False)
    before = {k: v for k, v in asdict(prompt).items() if k != "admissible_scope"}
    teacher = {k: v for k, v in _key_view(settings).items() if k not in STUDENT_FIELDS + DAGGER_FIELDS}
    by_hand = _hash({"v": PREPARE_VERSION, "suite": "0123456789abcdef", "settings": teacher, "prompt": before,
                     "extra": ""})
    assert _cache_key(tmp_path, settings, prompt, "") == by_hand
    listed = PromptSettings(show_admissible=True, admissible_scope="interactions")
    assert _cache_key(tmp_path, settings, listed, "") != _cache_key(tmp_path, settings, PromptSettings(), "")


@pytest.mark.slow
def test_the_students_data_from_the_teacher_are_its_won_episodes_token_for_token(tmp_path):
    """`student_source=teacher`: the shipped default teacher plays 8 train games of the shipped suite
    greedy; every datum is one won episode, and its reply tokens, decoded and replayed one by one
    in a fresh engine, win that game at the last of them (each reply an engine command)."""
    from harness import cache
    from harness.agent.prompt import PromptSettings
    from harness.default.prepare import TinySettings, teacher_episode_data
    from harness.envs import EnvPool, discover_games, interleave_task_types
    from harness.envs.generate import SuiteSpec, ensure_suite
    from harness.models import load_model, load_tokenizer

    suite = ensure_suite(SuiteSpec(), cache_root=tmp_path)  # the shipped suite, unpacked
    entry = cache.model_entry("teacher-c5a05ba7ab31fdbc")
    assert entry is not None, "the default teacher is shipped in assets/tiny"
    tokenizer, teacher = load_tokenizer(str(entry / "teacher")), load_model(str(entry / "teacher"), device="cpu")
    games = interleave_task_types(discover_games(suite, "train").games)[20:28]
    data, won = teacher_episode_data(teacher, tokenizer, games, TinySettings(layout="full"),
                                     PromptSettings(show_admissible=False))
    assert len(data) == won >= 1  # the default teacher wins about half of the train games
    by_index = {d.trajectory_index: d for d in data}
    assert len(by_index) == won
    with EnvPool(num_workers=1, max_steps=30) as pool:
        for index, datum in by_index.items():
            replies, current = [], []
            for token, trained in zip(datum.token_ids, datum.response_mask, strict=True):
                if trained:
                    current.append(token)
                elif current:
                    replies.append(current)
                    current = []
            replies += [current] if current else []
            (state,) = pool.reset([games[index].gamefile])
            for turn, reply in enumerate(replies):
                command = tokenizer.decode(reply, skip_special_tokens=True).strip()
                (state,) = pool.step([command])
                assert state.won == (turn == len(replies) - 1), (games[index].gamefile, turn, command)


def test_an_unknown_student_source_is_refused_naming_the_knob():
    from harness.default.prepare import TinySettings

    with pytest.raises(ValueError, match="model.tiny.student_source must be 'expert' or 'teacher', not 'planner'"):
        TinySettings(student_source="planner")


def test_the_expert_student_key_ignores_student_source():
    """With `student_source=teacher` the DAgger stage still rolls out the expert-demonstration
    student: its key is the one the default build (and the shipment) has, the hash's fields
    written out by hand; the teacher-sourced student is another entry, keyed by its teacher."""
    from dataclasses import asdict

    from harness.default.prepare import (
        PREPARE_VERSION,
        TinySettings,
        _expert_student_key,
        _hash,
        _student_key,
    )

    expert, sourced = TinySettings(), TinySettings(student_source="teacher")
    sft = {k: v for k, v in asdict(expert.student_sft).items() if k not in ("checkpoint_every", "bucket")}
    fields = {"student": asdict(expert.student), "student_sft": sft, "student_demos": expert.student_demos}
    by_hand = _hash({"v": PREPARE_VERSION, "teacher": "c5a05ba7ab31fdbc", "student": fields})
    assert _expert_student_key("c5a05ba7ab31fdbc", sourced) == by_hand
    assert _expert_student_key("c5a05ba7ab31fdbc", expert) == _student_key("c5a05ba7ab31fdbc", expert) == by_hand
    teacher_sourced = _student_key("teacher-c5a05ba7ab31fdbc", sourced)
    assert teacher_sourced not in (by_hand, _student_key("teacher-c5a05ba7ab31fdbc", expert))


def test_the_heads_knobs_reach_the_built_models_and_leave_the_default_key(tmp_path):
    """model.tiny.teacher_heads / student_heads set the attention heads (head dim = hidden / heads;
    as many key-value heads); the default 4 is the spec the shipped pair was built with, so its
    settings and key are those of TinySettings(); a head count that does not divide the width is
    refused when the settings are made, before any game is played."""
    from harness.agent.prompt import PromptSettings
    from harness.default.prepare import TinySettings, _cache_key
    from harness.default.tiny import build_tiny_model, build_tokenizer
    from harness.run import tiny_settings
    from tests.hydra_utils import compose_config

    (tmp_path / "suite.json").write_text('{"hash": "0123456789abcdef"}')
    default = tiny_settings(compose_config([]))
    assert (default.teacher.heads, default.teacher.kv_heads, default.student.heads) == (4, 4, 4)
    assert default.teacher == TinySettings().teacher and default.student == TinySettings().student
    eight = tiny_settings(compose_config(["model.tiny.teacher_heads=8", "model.tiny.student_heads=2"]))
    assert (eight.teacher.heads, eight.teacher.kv_heads, eight.student.heads, eight.student.kv_heads) == (8, 8, 2, 2)
    assert _cache_key(tmp_path, eight, PromptSettings(), "") != _cache_key(tmp_path, default, PromptSettings(), "")

    tokenizer = build_tokenizer(["go to bed 1", "take book 1 from bed 1"])
    config = build_tiny_model(eight.teacher, tokenizer).config
    assert (config.num_attention_heads, config.num_key_value_heads, config.hidden_size // config.num_attention_heads) == (8, 8, 32)
    with pytest.raises(ValueError, match="hidden must divide by heads"):
        tiny_settings(compose_config(["model.tiny.teacher_heads=3"]))  # 256 / 3
