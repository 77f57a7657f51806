"""The Environment seam (harness/envs/base.py): ALFWorld behind it, names, words, initial text."""

from __future__ import annotations

from dataclasses import replace

import pytest

from harness.agent.prompt import PromptSettings, render_next_user_message, render_window_messages
from harness.envs import get_environment
from harness.envs.alfworld import ALFWORLD, WORDING


def test_both_alfworld_names_are_the_one_environment_and_a_typo_is_named():
    assert get_environment("alfworld") is get_environment("alfworld_synth") is ALFWORLD
    assert ALFWORLD.task_types[6] == "pick_two_obj_and_place"
    with pytest.raises(ValueError, match=r"unknown environment env.name='alfwrld'.*Did you mean 'alfworld'"):
        get_environment("alfwrld")


def test_the_first_text_splits_into_observation_and_task():
    text = ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. You see a desk 1.\n\n"
            "Your task is to: put a pen in desk.")
    assert ALFWORLD.split_initial(text) == ("You are in the middle of a room. You see a desk 1.", "put a pen in desk.")
    assert ALFWORLD.split_initial("no task here") == ("no task here", "")


def test_prompts_use_the_environments_words():
    settings = PromptSettings(history=1)
    alfworld = render_window_messages("put a pen in desk.", [("o1.", "look")], "o2.", ["look"], settings)
    assert alfworld[-1]["content"] == ("Your task is to: put a pen in desk.\nYou have taken 1 step. The last 1:\n"
                                       "Observation: o1.\nAction: look\nObservation: o2.\nAdmissible actions: look")
    other = replace(WORDING, task_prefix="Task: ", observation_prefix="Obs: ", action_prefix="Act: ",
                    admissible_prefix="Valid: ")
    content = render_next_user_message("t.", "f.", ["look"], settings, wording=other)["content"]
    assert content == "Task: t.\nObs: f.\nValid: look"
