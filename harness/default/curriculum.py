"""A curriculum stage before the teacher's SFT: one-message search examples first.

The default teacher, SFT'd on whole demonstrations, takes an object whenever the list in view is
non-empty: its P(`take`) is the same whether or not the task names what is in view
(results/diagnosis/levers/session17/). A fresh model of the same size trained on one-message
examples alone (the task and one search observation -> the expert's command there) learns the
comparison in a few hundred steps; the same examples given after the demonstrations' SFT do not
undo the shortcut. This stage puts them first: the teacher is initialized by `steps` of SFT on
them, then trained on its usual data, optionally with `mix` of them kept among it.

An example is a one-turn episode record (harness.envs.demos) of a search state of the phase
before the first `take`, where the observation lists a receptacle's content:

- `take`: the expert took the task's object there: the whole command is trained;
- `go on`: the expert went to (or opened) another receptacle: only the first reply token, the
  verb, is trained, since which place comes next depends on the history the example leaves out.

They come from the demonstrations as played and from their counterfactual edits
(harness/default/counterfactual.py: the target put into, or taken out of, the list in view), and
the stage's data is balanced: as many `go on` examples as `take` ones (a seeded sample).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from harness.default.counterfactual import counterfactual_episodes, listed_items


@dataclass
class CurriculumSettings:
    """The stage's knobs (model.tiny.curriculum_*); steps = 0 and mix = 0: no stage, as shipped."""

    steps: int = 0
    """SFT steps on the one-message examples before the teacher's SFT (0: none)."""
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    edits: int = 8000
    """Counterfactual edits the examples are also made of (half each edit where the data allows)."""
    mix: int = 0
    """One-message examples kept among the teacher's SFT data after the stage (0: none)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "edits", "mix", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"model.tiny.curriculum_{name} must be >= 0, not {getattr(self, name)}")
        if self.steps > 0 and self.batch_size < 1:
            raise ValueError("model.tiny.curriculum_batch_size must be >= 1 when curriculum_steps > 0")

    @property
    def active(self) -> bool:
        return self.steps > 0 or self.mix > 0


def search_states(episodes: list[dict], edits: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(take, go on) search states of `episodes` (see the module's text), each as the episode's
    prefix ending at that turn: the turns up to each episode's first `take`, then `edits`
    counterfactual edits (prefixes as played, ending at the edited turn)."""
    take, go_on = [], []
    for episode in episodes:
        for i, turn in enumerate(episode["turns"]):
            if i == 0 or listed_items(turn["observation"]) is None:
                continue
            prefix = {**episode, "turns": episode["turns"][:i + 1]}
            if turn["action"].startswith("take "):
                take.append(prefix)
                break  # the search is over
            if turn["action"].startswith(("go to ", "open ")):
                go_on.append(prefix)
    for record in counterfactual_episodes(episodes, edits, seed):
        (take if record["turns"][-1]["action"].startswith("take ") else go_on).append(record)
    return take, go_on


def search_examples(episodes: list[dict], edits: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(take, go on) one-turn records: the search states' last turn alone (the task and that
    observation, no history)."""
    take, go_on = search_states(episodes, edits, seed)
    return tuple([{**r, "turns": r["turns"][-1:]} for r in records] for records in (take, go_on))


def verb_only(datum, turn: int | None = None):
    """The datum with only the first response token (of turn `turn`, if given) trained."""
    first = next(j for j, (m, t) in enumerate(zip(datum.response_mask, datum.turn_index, strict=True))
                 if m and (turn is None or t == turn))
    return replace(datum, response_mask=[int(j == first) for j in range(len(datum.response_mask))])


def curriculum_data(episodes: list[dict], tokenizer, prompt, edits: int, seed: int = 0) -> list:
    """The stage's balanced data: every `take` example (whole command) and as many `go on` ones
    (verb only), seeded; in the full layout (one turn: the task and the observation)."""
    from harness.default.sft import demo_data

    take, go_on = search_examples(episodes, edits, seed)
    if not take or not go_on:
        raise ValueError(f"the curriculum needs search states of both kinds; the demonstrations gave {len(take)} "
                         f"take and {len(go_on)} go-on examples (set model.tiny.curriculum_steps=0)")
    go_on = random.Random(seed).sample(go_on, min(len(go_on), len(take)))
    return demo_data(take, tokenizer, prompt, "full") + [verb_only(d) for d in demo_data(go_on, tokenizer, prompt, "full")]


def first_token_accuracy(model, data: list, pad_id: int, batch_size: int = 64) -> float:
    """Share of `data` whose first trained token is the argmax, teacher-forced."""
    import torch

    from harness.agent.trajectory import collate

    device = next(model.parameters()).device
    hits = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            chunk = data[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collate(chunk, pad_id).items()}
            logits = model(input_ids=batch["tokens_B_T"], attention_mask=batch["attention_mask_B_T"]).logits
            for row, datum in enumerate(chunk):
                j = datum.response_mask.index(1)
                hits += int(logits[row, j - 1].argmax()) == datum.token_ids[j]
    model.train(was_training)
    return hits / max(1, len(data))


def last_turn_verbs(records: list[dict], tokenizer, prompt, layout: str) -> list:
    """One datum per record in `layout`, its last turn's first reply token alone trained (in the
    window layout, the datum of the last turn; in the full layout, the episode's one datum)."""
    from harness.default.sft import demo_data

    data = []
    for record in records:
        last = len(record["turns"]) - 1
        (datum,) = [d for d in demo_data([record], tokenizer, prompt, layout) if last in d.turn_index][-1:]
        data.append(verb_only(datum, last))
    return data


def heldout_report(model, heldout_episodes: list[dict], tokenizer, prompt, pad_id: int, layout: str,
                   seed: int = 0) -> dict:
    """The first reply token's accuracy, teacher-forced in the model's own `layout`, at the held-out
    demonstrations' search states and 200 edits of them (each state with the prefix as played):
    where the expert takes (`take`) and where it goes on (`go_on`). A teacher that takes whenever
    something is in view scores high on the first and low on the second."""
    take, go_on = search_states(heldout_episodes, 200, seed)
    out = {}
    for name, records in (("take", take), ("go_on", go_on)):
        data = last_turn_verbs(records, tokenizer, prompt, layout)
        out[name] = first_token_accuracy(model, data, pad_id) if data else None
        out[f"{name}_examples"] = len(data)
    return out
