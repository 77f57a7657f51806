"""Prompt rendering and action parsing: the task in every prompt, windows, answer formats."""

from __future__ import annotations

import itertools

import pytest

from harness.agent.prompt import (
    THINK_ACTION_INSTRUCTION,
    PromptSettings,
    format_response,
    parse_action,
    render_first_user_message,
    render_next_user_message,
    render_window_messages,
)

TASK = "put a clean apple 1 in fridge."
ADMISSIBLE = ["go to countertop 1", "go to fridge 1", "help", "inventory", "look"]


def _history(n: int) -> list[tuple[str, str]]:
    return [(f"observation number {i}.", f"go to cabinet {i}") for i in range(n)]


def _all_settings() -> list[PromptSettings]:
    grid = itertools.product([-1, 0, 1, 2, 3, 5, 10, 40], [True, False], ["action", "think_action"],
                             [None, "You play a text game."])
    return [PromptSettings(history=h, show_admissible=a, answer_format=f, system_prompt=s) for h, a, f, s in grid]


def test_task_sentence_in_every_window_prompt_at_every_step_and_history_length():
    checked = 0
    for settings in _all_settings():
        for step in range(31):
            messages = render_window_messages(TASK, _history(step), f"current {step}.", ADMISSIBLE, settings)
            user = messages[-1]
            assert user["role"] == "user"
            assert user["content"].splitlines()[0] == f"Your task is to: {TASK}"
            # the task is stated once per prompt, never lost among history lines
            assert user["content"].count(TASK) == 1
            checked += 1
    assert checked == 8 * 2 * 2 * 2 * 31


def test_task_sentence_in_every_full_layout_user_message():
    for settings in _all_settings():
        first = render_first_user_message(TASK, "You are in the middle of a room.", ADMISSIBLE, settings)
        assert first["content"].startswith(f"Your task is to: {TASK}\n")
        for step in range(1, 31):
            later = render_next_user_message(TASK, f"feedback {step}.", ADMISSIBLE, settings)
            assert later["role"] == "user"
            assert later["content"].startswith(f"Your task is to: {TASK}\n")
            assert f"Observation: feedback {step}." in later["content"]


def test_empty_task_is_refused_not_silently_dropped():
    with pytest.raises(ValueError, match="task"):
        render_window_messages("  ", [], "obs.", ADMISSIBLE, PromptSettings())
    with pytest.raises(ValueError, match="task"):
        render_next_user_message("", "Nothing happens.", ADMISSIBLE, PromptSettings())


def test_window_shows_exactly_the_last_history_pairs():
    history = _history(5)  # observation number 0..4, go to cabinet 0..4
    content = render_window_messages(TASK, history, "now.", ADMISSIBLE, PromptSettings(history=2))[-1]["content"]
    assert content.splitlines() == [
        f"Your task is to: {TASK}",
        "You have taken 5 steps. The last 2:",
        "Observation: observation number 3.",
        "Action: go to cabinet 3",
        "Observation: observation number 4.",
        "Action: go to cabinet 4",
        "Observation: now.",
        "Admissible actions: go to countertop 1, go to fridge 1, inventory, look",
    ]
    every = render_window_messages(TASK, history, "now.", ADMISSIBLE, PromptSettings(history=-1))[-1]["content"]
    assert "The last 5:" in every and all(f"go to cabinet {i}\n" in every for i in range(5))
    none = render_window_messages(TASK, history, "now.", ADMISSIBLE, PromptSettings(history=0))[-1]["content"]
    assert "cabinet" not in none and "steps" not in none
    # more history asked for than exists: all 1 pair, and the count says so
    short = render_window_messages(TASK, history[:1], "now.", ADMISSIBLE, PromptSettings(history=3))[-1]["content"]
    assert "You have taken 1 step. The last 1:" in short


def test_first_full_message_equals_the_window_prompt_without_history():
    settings = PromptSettings(history=3)
    window = render_window_messages(TASK, [], "room.", ADMISSIBLE, settings)
    assert window == [render_first_user_message(TASK, "room.", ADMISSIBLE, settings)]


def test_admissible_knobs_and_system_prompt():
    shown = render_window_messages(TASK, [], "o.", ADMISSIBLE, PromptSettings(drop_help=False))[-1]["content"]
    assert shown.endswith("Admissible actions: go to countertop 1, go to fridge 1, help, inventory, look")
    hidden = render_window_messages(TASK, [], "o.", ADMISSIBLE, PromptSettings(show_admissible=False))[-1]["content"]
    assert "Admissible" not in hidden and "go to fridge 1" not in hidden
    with_system = render_window_messages(TASK, [], "o.", ADMISSIBLE, PromptSettings(system_prompt="Be brief."))
    assert with_system[0] == {"role": "system", "content": "Be brief."} and len(with_system) == 2


def test_interactions_scope_lists_only_the_commands_that_act_on_objects():
    admissible = ["examine desk 1", "go to bed 1", "go to drawer 3", "help", "inventory", "look",
                  "open drawer 2", "take alarmclock 2 from desk 1", "use desklamp 1"]
    settings = PromptSettings(admissible_scope="interactions")
    content = render_next_user_message(TASK, "You arrive at desk 1.", admissible, settings)["content"]
    assert content.splitlines()[-1] == "Admissible actions: open drawer 2, take alarmclock 2 from desk 1, use desklamp 1"
    # nowhere to act: the line is there, empty, so "nothing to do here" reads the same way each time
    idle = render_next_user_message(TASK, "o.", ["go to bed 1", "look", "inventory"], settings)["content"]
    assert idle.splitlines()[-1] == "Admissible actions: "
    # the scope only filters a list that is shown
    hidden = render_next_user_message(TASK, "o.", admissible, PromptSettings(show_admissible=False,
                                                                             admissible_scope="interactions"))
    assert "Admissible" not in hidden["content"]
    with pytest.raises(ValueError, match="admissible_scope must be one of"):
        PromptSettings(admissible_scope="objects")


def test_think_action_format_asks_for_tags_and_formats_sft_targets():
    settings = PromptSettings(answer_format="think_action")
    content = render_next_user_message(TASK, "Nothing happens.", ADMISSIBLE, settings)["content"]
    assert content.endswith(THINK_ACTION_INSTRUCTION)
    assert "<action>" not in render_next_user_message(TASK, "x.", ADMISSIBLE, PromptSettings())["content"]
    assert format_response("look", settings, "I am lost.") == "<think>I am lost.</think><action>look</action>"
    assert format_response("look", PromptSettings()) == "look"


@pytest.mark.parametrize("reply, expected", [
    ("go to fridge 1", ("go to fridge 1", True, True)),
    ("  Go   To\tFridge 1 \n", ("go to fridge 1", True, True)),
    ("go to fridge 2", ("go to fridge 2", True, False)),  # well-formed, not admissible
    ("help", ("help", True, True)),  # admissible for the engine even when not listed
    ("", ("", False, False)),
    (" \n ", (" \n ", False, False)),  # unparseable: passed on exactly as written
])
def test_parse_bare_action(reply, expected):
    parsed = parse_action(reply, ADMISSIBLE, PromptSettings())
    assert (parsed.action, parsed.parseable, parsed.admissible) == expected


@pytest.mark.parametrize("reply, expected", [
    ("<think>fridge first</think><action>go to fridge 1</action>", ("go to fridge 1", True, True)),
    ("<think>x</think>\n<action> Go to  COUNTERTOP 1 </action>", ("go to countertop 1", True, True)),
    ("<action>look</action> no, <action>go to fridge 1</action>", ("go to fridge 1", True, True)),  # last wins
    ("<think>hmm</think><action>open fridge 1</action>", ("open fridge 1", True, False)),
    ("<think>I will go to fridge 1</think>", ("<think>I will go to fridge 1</think>", False, False)),
    ("<action>  </action>", ("<action>  </action>", False, False)),
    ("go to fridge 1", ("go to fridge 1", False, False)),  # right words, wrong format
])
def test_parse_think_action(reply, expected):
    parsed = parse_action(reply, ADMISSIBLE, PromptSettings(answer_format="think_action"))
    assert (parsed.action, parsed.parseable, parsed.admissible) == expected


def test_bad_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="answer_format must be one of"):
        PromptSettings(answer_format="json")
    with pytest.raises(ValueError, match="history must be"):
        PromptSettings(history=-2)
