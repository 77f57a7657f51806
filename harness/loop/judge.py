"""The turn-level judge of SAGE-OPD: the teacher labels each student turn Skip, Weak or Strong.

The teacher is shown a prompt made from a text template (conf/judge/default.txt: the task, the
recent history, the observation, the student's action and the engine's feedback) and the label
probabilities are read from its next-token distribution at the start of the assistant reply,
restricted to the first token of each label word and renormalized over those three. One batched
forward pass covers every turn of a step; nothing is sampled. Turns with an empty or unparseable
response are not judged: they are marked invalid and the method fails them closed to Strong.
The other per-turn signal, the oracle gate's verifier labels (`oracle_labels`), lives here too.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from harness.agent.rollout import chat_tokens
from harness.agent.trajectory import Trajectory
from harness.envs.alfworld import WORDING
from harness.loop.scoring import Positions, context_hidden, model_parts

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
LABEL_NAMES = ("skip", "weak", "strong")  # column order of probs_U_3 (methods.batch.LABELS)
TEMPLATE_FIELDS = ("task", "history", "observation", "action", "feedback", "labels", "skip", "weak", "strong")
NO_HISTORY = "No earlier steps."
_OBSERVATION_PREFIX = WORDING.observation_prefix  # how the prompt writes the current observation

TurnKey = tuple[int, int]  # (trajectory index, turn index), as in collate's turn_keys_U


@dataclass(frozen=True)
class JudgeSettings:
    """How the teacher is asked to judge a turn (every field is a knob)."""

    template: str = "judge/default.txt"
    """Prompt template file: absolute, or relative to conf/ (or the repo root, or the cwd).
    Python str.format fields: {task} (required), {history}, {observation}, {action}, {feedback},
    {labels}, {skip}, {weak}, {strong}."""
    history: int = 2
    """Past (observation, action) pairs shown; -1 = all, 0 = none."""
    labels: tuple[str, str, str] = ("Skip", "Weak", "Strong")
    """The label words in the order Skip, Weak, Strong; their first tokens must differ."""
    max_prompt_tokens: int = 1024
    """Longer judge prompts show fewer history pairs; if none fits, it is an error."""

    def __post_init__(self) -> None:
        labels = tuple(str(label) for label in self.labels)
        object.__setattr__(self, "labels", labels)  # a Hydra ListConfig or list becomes a tuple
        if len(labels) != 3 or any(not label.strip() for label in labels):
            raise ValueError(f"judge.labels must be three non-empty words (Skip, Weak, Strong), got {list(labels)}")
        if self.history < -1:
            raise ValueError(f"judge.history must be -1 (all), 0 or a positive count, not {self.history}")
        if self.max_prompt_tokens < 1:
            raise ValueError(f"judge.max_prompt_tokens must be >= 1, not {self.max_prompt_tokens}")


def template_path(settings: JudgeSettings) -> Path:
    """The template file: an absolute path, else looked up under conf/, the repo root, the cwd."""
    path = Path(settings.template).expanduser()
    tried = [path] if path.is_absolute() else [CONF_DIR / path, REPO_ROOT / path, Path.cwd() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"judge.template={settings.template!r} is not a file (looked at {', '.join(map(str, tried))}); "
        f"give an absolute path or a path under {CONF_DIR}, e.g. judge/default.txt"
    )


def load_template(settings: JudgeSettings) -> str:
    """The template text, checked: known fields only, and the task always present."""
    path = template_path(settings)
    text = path.read_text().strip()
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise ValueError(f"judge template {path}: {err} (write literal braces as {{{{ and }}}})") from err
    unknown = sorted(fields - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(f"judge template {path} uses unknown fields {unknown}; known: {list(TEMPLATE_FIELDS)} "
                         "(write literal braces as {{ and }})")
    if "task" not in fields:
        raise ValueError(f"judge template {path} has no {{task}} field: every judge prompt must state the task")
    return text


def judge_vocabulary(settings: JudgeSettings) -> list[str]:
    """Words and marks of the template and labels, for a word-level tokenizer's `extra_words`."""
    text = " ".join([load_template(settings), NO_HISTORY, *settings.labels])
    text = re.sub(r"\{[a-z]*\}", " ", text)
    return sorted(set(re.findall(r"\w+|[^\w\s]", text)))


def judge_prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The chat text of a judge prompt, ending with the assistant header (the label comes next)."""
    # enable_thinking=False: Qwen3's template then closes an empty <think> block, so the reply
    # starts with the label; templates without the variable ignore it.
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def label_token_ids(tokenizer, labels: tuple[str, ...] | list[str],
                    messages: list[dict[str, str]] | None = None) -> list[int]:
    """The first token id of each label as it would start the assistant reply after `messages`
    (a judge prompt; default a one-word one); must be distinct."""
    chat = chat_tokens(tokenizer)
    probe = judge_prompt_text(tokenizer, messages or [{"role": "user", "content": "x"}])
    probe_ids = chat.encode(probe)
    ids = []
    for label in labels:
        full = chat.encode(probe + label)
        # The label as the reply's start (BPE merges may depend on what precedes it).
        first = full[len(probe_ids)] if full[: len(probe_ids)] == probe_ids and len(full) > len(probe_ids) else None
        if first is None:
            alone = chat.encode(label)
            first = alone[0] if alone else None
        if first is None or (tokenizer.unk_token_id is not None and first == tokenizer.unk_token_id):
            raise ValueError(
                f"judge label {label!r} has no token of its own in tokenizer {_tokenizer_name(tokenizer)!r} "
                f"(labels {list(labels)}); use label words in its vocabulary, or add judge_vocabulary(settings) "
                "to a word-level tokenizer's extra_words"
            )
        ids.append(first)
    if len(set(ids)) != len(ids):
        pieces = [tokenizer.convert_ids_to_tokens(i) for i in ids]
        raise ValueError(
            f"judge labels {list(labels)} start with the tokens {pieces} (ids {ids}) in tokenizer "
            f"{_tokenizer_name(tokenizer)!r}: two labels share a first token, so their probabilities cannot be "
            "told apart; choose distinct label words (judge.labels=[...])"
        )
    return ids


def check_label_tokens(tokenizer, settings: JudgeSettings) -> list[int]:
    """Start-up check of judge.labels: their first tokens, read where the judge reads them (the
    reply to a prompt made from the template), are known and distinct; the error names them."""
    messages = render_judge_messages("put a mug in the sinkbasin.", [("You are in a room.", "look")],
                                     "You arrive at the sinkbasin 1.", "go to sinkbasin 1", "Nothing happens.",
                                     settings)
    return label_token_ids(tokenizer, settings.labels, messages)


def _labels_text(labels: tuple[str, ...]) -> str:
    return ", ".join(labels[:-1]) + " or " + labels[-1]


def render_judge_messages(task: str, history: list[tuple[str, str]], observation: str, action: str,
                          feedback: str, settings: JudgeSettings, *, shown: int | None = None,
                          template: str | None = None) -> list[dict[str, str]]:
    """Chat messages asking the teacher to label one turn; `history` holds every past pair.

    `shown` overrides how many past pairs are shown (settings.history otherwise); `template`
    skips re-reading the file.
    """
    if not task.strip():
        raise ValueError("empty task sentence: every judge prompt must state the task (check the env reset)")
    limit = settings.history if shown is None else shown
    pairs = history if limit == -1 else history[-limit:] if limit else []
    lines = [f"{WORDING.observation_prefix}{o.strip()}\n{WORDING.action_prefix}{a.strip()}" for o, a in pairs]
    skip, weak, strong = settings.labels
    content = (template if template is not None else load_template(settings)).format(
        task=task.strip(), history="\n".join(lines) if lines else NO_HISTORY, observation=observation.strip(),
        action=action.strip(), feedback=feedback.strip(), labels=_labels_text(settings.labels),
        skip=skip, weak=weak, strong=strong,
    )
    return [{"role": "user", "content": content}]


def fitted_prompt(tokenizer, task: str, history: list[tuple[str, str]], observation: str, action: str,
                  feedback: str, settings: JudgeSettings, template: str) -> tuple[list[int], list[dict[str, str]]]:
    """(prompt ids, messages) of one turn, showing fewer past pairs if it is over max_prompt_tokens."""
    chat = chat_tokens(tokenizer)
    most = len(history) if settings.history == -1 else min(settings.history, len(history))
    for shown in range(most, -1, -1):
        messages = render_judge_messages(task, history, observation, action, feedback, settings,
                                         shown=shown, template=template)
        ids = chat.encode(judge_prompt_text(tokenizer, messages))
        if len(ids) <= settings.max_prompt_tokens:
            return ids, messages
    raise ValueError(
        f"a judge prompt has {len(ids)} tokens without any history, over judge.max_prompt_tokens="
        f"{settings.max_prompt_tokens}; raise it (within the teacher's context) or shorten the template"
    )


def turn_observations(trajectory: Trajectory, special_tokens: list[str] | tuple[str, ...] = ()) -> list[str]:
    """What the agent saw before each turn: the previous turn's feedback, or for turn 0 the
    current observation line of its prompt (the rollout keeps no separate initial observation)."""
    observations = []
    for t, turn in enumerate(trajectory.turns):
        if t > 0:
            observations.append(trajectory.turns[t - 1].feedback)
            continue
        text = turn.prompt_text
        start = text.rfind(_OBSERVATION_PREFIX)
        line = text[start + len(_OBSERVATION_PREFIX):].split("\n", 1)[0] if start >= 0 else ""
        for token in special_tokens:  # a chat-frame token right after the line (window layout)
            if token and token in line:
                line = line[: line.index(token)]
        observations.append(line.strip())
    return observations


def turn_is_judged(turn) -> bool:
    """Only a parseable, non-empty response is judged; others fail closed to Strong."""
    return bool(turn.parseable and turn.response_text.strip())


@torch.no_grad()
def label_probs(teacher, prompts: list[list[int]], label_ids: list[int], *, pad_id: int,
                batch_size: int = 32, device: torch.device | str | None = None,
                group_tokens: int | None = None) -> Tensor:
    """(N, 3) probabilities over the label tokens at the end of each prompt, float32 on CPU.

    Prompts are sorted by length and right-padded in batches of `batch_size`, each batch run in
    groups of at most `group_tokens` positions (scoring.context_hidden); only the last prompt
    position goes through the output head (a V-wide row per prompt, never per token).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    body, head = model_parts(teacher)
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    index_3 = torch.tensor(label_ids, dtype=torch.long, device=device)
    probs_N_3 = torch.zeros((len(prompts), 3), dtype=torch.float32)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = teacher.training
    teacher.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(prompts[i]) for i in rows)
            ids_B_T = torch.full((len(rows), width), pad_id, dtype=torch.long)
            attention_B_T = torch.zeros((len(rows), width), dtype=torch.long)
            for b, i in enumerate(rows):
                ids_B_T[b, : len(prompts[i])] = torch.tensor(prompts[i], dtype=torch.long)
                attention_B_T[b, : len(prompts[i])] = 1
            # the hidden state that predicts position len(prompt): the prompt's last one
            ends = Positions(torch.arange(len(rows)), attention_B_T.sum(1), (len(rows), width))
            hidden_B_D = context_hidden(body, {"tokens_B_T": ids_B_T, "attention_mask_B_T": attention_B_T}, ends,
                                        group_tokens)
            logits_B_3 = head(hidden_B_D).float().index_select(1, index_3)
            probs_N_3[rows] = torch.softmax(logits_B_3, dim=-1).cpu()
    finally:
        teacher.train(was_training)
    return probs_N_3


@dataclass
class JudgeResult:
    """Label probabilities of every turn, in trajectory-then-turn order, with their keys."""

    probs_U_3: Tensor  # (Skip, Weak, Strong); an unjudged turn holds (0, 0, 1)
    valid_U: Tensor  # bool; False for empty/unparseable responses (fail closed to Strong)
    turn_keys: list[TurnKey]

    def for_batch(self, turn_keys_U: Tensor) -> tuple[Tensor, Tensor]:
        """(probs_U_3, valid_U) in the turn order of a collated batch (its `turn_keys_U`)."""
        rows = {key: u for u, key in enumerate(self.turn_keys)}
        probs_by_key = {key: self.probs_U_3[u] for key, u in rows.items()}
        valid_by_key = {key: self.valid_U[u] for key, u in rows.items()}
        return align_to_batch(probs_by_key, turn_keys_U), align_to_batch(valid_by_key, turn_keys_U)


def align_to_batch(probs_by_key: dict[TurnKey, Tensor], turn_keys_U: Tensor) -> Tensor:
    """Stack per-turn values in the order of collate's `turn_keys_U` ((trajectory, turn) pairs)."""
    keys = [tuple(int(v) for v in row) for row in turn_keys_U.reshape(-1, 2).tolist()]
    missing = [key for key in keys if key not in probs_by_key]
    if missing:
        raise KeyError(
            f"the judge has no result for (trajectory, turn) {missing[:5]}; judge the same trajectories that "
            "made the batch, numbered as their Datum.trajectory_index (pass trajectory_ids to judge_turns)"
        )
    if not keys:
        example = next(iter(probs_by_key.values()), torch.zeros(3))
        return example.new_zeros((0, *example.shape))
    return torch.stack([probs_by_key[key] for key in keys])


def judge_turns(teacher, tokenizer, trajectories: list[Trajectory], settings: JudgeSettings, *,
                batch_size: int = 32, device: torch.device | str | None = None,
                trajectory_ids: list[int] | None = None, group_tokens: int | None = None) -> JudgeResult:
    """Skip/Weak/Strong probabilities of every turn of `trajectories` (trajectory 0's turns first).

    `trajectory_ids` numbers the trajectories as their Datum.trajectory_index (default 0..n-1).
    """
    ids = list(range(len(trajectories))) if trajectory_ids is None else list(trajectory_ids)
    if len(ids) != len(trajectories):
        raise ValueError(f"got {len(ids)} trajectory_ids for {len(trajectories)} trajectories")
    template = load_template(settings)
    label_ids = label_token_ids(tokenizer, settings.labels)
    chat = chat_tokens(tokenizer)
    special = list(tokenizer.all_special_tokens)
    keys: list[TurnKey] = []
    valid: list[bool] = []
    prompts: list[list[int]] = []
    for trajectory_id, trajectory in zip(ids, trajectories, strict=True):
        observations = turn_observations(trajectory, special)
        for t, turn in enumerate(trajectory.turns):
            keys.append((trajectory_id, t))
            valid.append(turn_is_judged(turn))
            if valid[-1]:
                history = [(observations[k], trajectory.turns[k].action) for k in range(t)]
                prompt, _ = fitted_prompt(tokenizer, trajectory.task, history, observations[t], turn.action,
                                          turn.feedback, settings, template)
                prompts.append(prompt)
    valid_U = torch.tensor(valid, dtype=torch.bool)
    probs_U_3 = torch.tensor([[0.0, 0.0, 1.0]]).repeat(len(keys), 1)
    if prompts:
        probs_U_3[valid_U] = label_probs(teacher, prompts, label_ids, pad_id=chat.pad_id,
                                         batch_size=batch_size, device=device, group_tokens=group_tokens)
    return JudgeResult(probs_U_3, valid_U, keys)


def judge_argmax_labels(probs_U_3: Tensor, valid_U: Tensor | None = None,
                        names: tuple[str, ...] = LABEL_NAMES) -> list[str]:
    """The most likely label name per turn (for logs); unjudged turns read as Strong."""
    picked = probs_U_3.argmax(-1).tolist()
    judged = [True] * len(picked) if valid_U is None else valid_U.bool().tolist()
    return [names[p] if ok else names[2] for p, ok in zip(picked, judged, strict=True)]


def oracle_labels(trajectories: list[Trajectory]) -> dict[tuple[int, int], int]:
    """Verifier labels per (trajectory, turn): Strong for a rejected or repeated action, Skip for
    the planner's own next action, Weak otherwise. Reads the environment: NOT verifier-free."""
    labels = {}
    for i, trajectory in enumerate(trajectories):
        for t, turn in enumerate(trajectory.turns):
            if not (turn.parseable and turn.admissible_action) or turn.repeated:
                labels[(i, t)] = 2
            elif turn.expert_action is not None and turn.action == turn.expert_action:
                labels[(i, t)] = 0
            else:
                labels[(i, t)] = 1
    return labels
