"""Prompts in the verl-agent style, and parsing the agent's action out of its reply; the words
come from the environment (`Wording`, harness/envs/base.py; ALFWorld's by default).

Two layouts (see rollout.py): `window` renders each turn as one fresh chat (the task, a
bounded history of (observation, action) pairs, the current observation, the admissible
actions); `full` keeps one growing chat whose later user messages carry the engine's
feedback. In both, EVERY user message starts with the task sentence: a known evaluator bug
dropped it after step 2 and halved success (alfworld.md), so this module never lets a
prompt go out without it.

The text is kept compact because the tiny default models have short contexts and a
word-level tokenizer (one token per word, number and punctuation mark).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.envs.alfworld import WORDING
from harness.envs.base import Wording

ANSWER_FORMATS = ("action", "think_action")
ADMISSIBLE_SCOPES = ("all", "interactions")

THINK_ACTION_INSTRUCTION = WORDING.think_action_instruction  # for instruction-tuned LLMs

_ACTION_RE = re.compile(r"<action>(.*?)</action>", re.S | re.I)
_WHITESPACE_RE = re.compile(r"\s+")
_MARK_ASSISTANT, _MARK_USER = "@@assistant-marker@@", "@@user-marker@@"


@dataclass(frozen=True)
class PromptSettings:
    """What the agent is shown each turn and how it must answer (every field is a knob)."""

    history: int = 2
    """Past (observation, action) pairs shown in the `window` layout; -1 = all, 0 = none
    (verl-agent's default is 2)."""
    show_admissible: bool = True
    """List the admissible actions of the current state."""
    admissible_scope: str = "all"
    """Which of them are listed: 'all', or 'interactions': the commands that act on an object
    (take, open, move, use, clean, ...), leaving out the environment's navigation and looking
    commands (`Wording.navigation_prefixes`: go to, examine, look, inventory, help). The places
    to go are in the room's first observation; the list then costs a few tokens a turn and says
    what can be done here, which the observation alone leaves to the policy's reading."""
    answer_format: str = "action"
    """'action': the reply is the bare action (tiny models); 'think_action':
    `<think>...</think><action>...</action>` (instruction-tuned LLMs)."""
    drop_help: bool = True
    """Leave 'help' out of the listed admissible actions (it only prints the command list)."""
    system_prompt: str | None = None
    """Optional system message text; None = no system message."""

    def __post_init__(self) -> None:
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, not {self.answer_format!r}")
        if self.admissible_scope not in ADMISSIBLE_SCOPES:
            raise ValueError(f"admissible_scope must be one of {ADMISSIBLE_SCOPES}, not {self.admissible_scope!r}")
        if self.history < -1:
            raise ValueError(f"history must be -1 (all), 0 or a positive count, not {self.history}")


@dataclass(frozen=True)
class ParsedAction:
    """The command sent to the engine, and whether the reply was well-formed and admissible."""

    action: str
    parseable: bool
    admissible: bool


def normalize_action(text: str) -> str:
    """Lowercase, strip, and collapse runs of whitespace to one space."""
    return _WHITESPACE_RE.sub(" ", text).strip().lower()


def _task_line(task: str, wording: Wording) -> str:
    if not task.strip():
        # Every prompt must carry the task: an empty one means the env state lost it.
        raise ValueError("empty task sentence: every prompt must state the task (check the env reset)")
    return f"{wording.task_prefix}{task.strip()}"


def _admissible_line(admissible: list[str], settings: PromptSettings, wording: Wording) -> str | None:
    if not settings.show_admissible:
        return None
    shown = [a for a in admissible if not (settings.drop_help and a.strip().lower() == "help")]
    if settings.admissible_scope == "interactions":
        shown = [a for a in shown if not a.strip().lower().startswith(wording.navigation_prefixes)]
    return wording.admissible_prefix + ", ".join(shown)


def _closing_lines(admissible: list[str], settings: PromptSettings, wording: Wording) -> list[str]:
    lines = [line for line in [_admissible_line(admissible, settings, wording)] if line is not None]
    if settings.answer_format == "think_action":
        lines.append(wording.think_action_instruction)
    return lines


def system_messages(settings: PromptSettings) -> list[dict[str, str]]:
    """The system message, if the settings have one, as a list to prepend to a chat."""
    return [{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else []


def render_window_messages(
    task: str,
    history: list[tuple[str, str]],
    observation: str,
    admissible: list[str],
    settings: PromptSettings,
    wording: Wording = WORDING,
) -> list[dict[str, str]]:
    """Chat messages for one turn of the `window` layout: task, last pairs, observation, actions.

    `history` holds every past (observation, action) pair of the episode, oldest first; the
    settings decide how many are shown.
    """
    if settings.history == -1:
        shown = history
    else:
        shown = history[-settings.history:] if settings.history else []
    lines = [_task_line(task, wording)]
    if shown:
        steps = f"{len(history)} step" + ("s" if len(history) != 1 else "")
        lines.append(f"You have taken {steps}. The last {len(shown)}:")
        for past_observation, past_action in shown:
            lines.append(f"{wording.observation_prefix}{past_observation.strip()}")
            lines.append(f"{wording.action_prefix}{past_action.strip()}")
    lines.append(f"{wording.observation_prefix}{observation.strip()}")
    lines += _closing_lines(admissible, settings, wording)
    return system_messages(settings) + [{"role": "user", "content": "\n".join(lines)}]


def render_first_user_message(
    task: str, observation: str, admissible: list[str], settings: PromptSettings, wording: Wording = WORDING
) -> dict[str, str]:
    """The first user message of the `full` layout (prepend `system_messages(settings)`)."""
    return render_window_messages(task, [], observation, admissible, settings, wording)[-1]


def render_next_user_message(
    task: str, feedback: str, admissible: list[str], settings: PromptSettings, wording: Wording = WORDING
) -> dict[str, str]:
    """A later user message of the `full` layout: the task restated, feedback, actions."""
    lines = [_task_line(task, wording), f"{wording.observation_prefix}{feedback.strip()}"]
    lines += _closing_lines(admissible, settings, wording)
    return {"role": "user", "content": "\n".join(lines)}


def format_response(action: str, settings: PromptSettings, thought: str = "") -> str:
    """The assistant reply that states `action` in the settings' answer format (for SFT)."""
    if settings.answer_format == "think_action":
        return f"<think>{thought}</think><action>{action}</action>"
    return action


def parse_action(response_text: str, admissible: list[str], settings: PromptSettings) -> ParsedAction:
    """Read the action from a reply; an unparseable reply is passed on as written.

    'action' format: the whole reply, normalized. 'think_action': the content of the last
    <action>...</action>. An empty or missing action gives parseable=False and the raw text
    as the action, so the engine answers it ("Nothing happens.") and it counts as invalid.
    """
    if settings.answer_format == "think_action":
        matches = _ACTION_RE.findall(response_text)
        action = normalize_action(matches[-1]) if matches else ""
    else:
        action = normalize_action(response_text)
    if not action:
        return ParsedAction(response_text, parseable=False, admissible=False)
    allowed = {normalize_action(a) for a in admissible}
    return ParsedAction(action, parseable=True, admissible=action in allowed)


class ChatTokens:
    """The chat frame of one tokenizer, worked out once from its chat template.

    `between_turns(user_message)` gives the ids that follow an assistant reply's end-of-turn
    token: for ChatML "\\n<|im_start|>user\\n{content}<|im_end|>\\n<|im_start|>assistant\\n".
    """

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        probe = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": _MARK_ASSISTANT}]
        before = tokenizer.apply_chat_template(probe, tokenize=False)
        after = tokenizer.apply_chat_template(probe + [{"role": "user", "content": _MARK_USER}],
                                              tokenize=False, add_generation_prompt=True)
        if not after.startswith(before) or _MARK_ASSISTANT not in before:
            raise ValueError(
                f"the chat template of {type(tokenizer).__name__} does not render a conversation as a prefix "
                "of its continuation, so the `full` layout cannot extend turns token by token; use layout=window."
            )
        reply_tail = before[before.index(_MARK_ASSISTANT) + len(_MARK_ASSISTANT):]
        self.end_of_turn = self._end_of_turn_token(reply_tail)
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(self.end_of_turn)
        between = reply_tail[len(self.end_of_turn):] + after[len(before):]
        self._user_prefix, self._user_suffix = between.split(_MARK_USER)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_of_turn_id

    def _end_of_turn_token(self, reply_tail: str) -> str:
        candidates = [self.tokenizer.eos_token] + list(self.tokenizer.all_special_tokens)
        for token in candidates:
            if token and reply_tail.startswith(token):
                return token
        raise ValueError(
            f"the chat template ends an assistant reply with {reply_tail[:20]!r}, which starts with no special "
            "token of the tokenizer; generation could not stop at the end of a turn."
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages: list[dict[str, str]]) -> tuple[list[int], str]:
        """A fresh chat with the assistant header appended: (ids, text)."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.encode(text), text

    def between_turns(self, user_message: dict[str, str]) -> list[int]:
        """Ids from after an assistant's end-of-turn token to the next assistant header."""
        return self.encode(self._user_prefix + user_message["content"] + self._user_suffix)


_CHAT_TOKENS: dict[int, ChatTokens] = {}


def chat_tokens(tokenizer) -> ChatTokens:
    """The cached `ChatTokens` of this tokenizer object."""
    cached = _CHAT_TOKENS.get(id(tokenizer))
    if cached is None or cached.tokenizer is not tokenizer:
        cached = _CHAT_TOKENS[id(tokenizer)] = ChatTokens(tokenizer)
    return cached
