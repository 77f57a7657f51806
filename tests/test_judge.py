"""The turn judge: label tokens, prompts, one batched pass, alignment, and judge examples from the engine."""

from __future__ import annotations

import math

import pytest
import torch

from harness.agent.prompt import PromptSettings
from harness.agent.rollout import RolloutSettings, rollout
from harness.agent.trajectory import Datum, Trajectory, Turn, collate
from harness.default.judge_data import (
    INVALID_FEEDBACK,
    JudgeDataSettings,
    episode_examples,
    judge_accuracy,
    judge_sft_data,
    label_of,
    play_noisy_episodes,
)
from harness.default.tiny import TinyModelSpec, build_tiny_model, build_tokenizer
from harness.envs import EnvPool, discover_games
from harness.loop.judge import (
    JudgeResult,
    JudgeSettings,
    align_to_batch,
    judge_argmax_labels,
    judge_turns,
    judge_vocabulary,
    label_token_ids,
    load_template,
    render_judge_messages,
    turn_observations,
)

SETTINGS = JudgeSettings()
SPEC = TinyModelSpec(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, tie_embeddings=False)
TASK = "put a clean mug in coffeemachine."
CORPUS = [
    "Your task is to: put a clean mug in coffeemachine.",
    "You are in the middle of a room. Looking quickly around you, you see a countertop 1, a sinkbasin 1.",
    "You arrive at countertop 1. On the countertop 1, you see a mug 2. Nothing happens.",
    "You pick up the mug 2 from the countertop 1. You clean the mug 2 using the sinkbasin 1.",
]


def turn(action: str, feedback: str, prompt_text: str = "", parseable: bool = True, text: str | None = None) -> Turn:
    return Turn(prompt_text=prompt_text, response_ids=[5], response_text=action if text is None else text,
                action=action, feedback=feedback, admissible=[], parseable=parseable)


FIRST_PROMPT = ("<|im_start|>user\nYour task is to: put a clean mug in coffeemachine.\nObservation: You are in the "
                "middle of a room.<|im_end|>\n<|im_start|>assistant\n")
TRAJECTORIES = [
    Trajectory("g0", TASK, "pick_clean_then_place_in_recep", turns=[
        turn("go to countertop 1", "You arrive at countertop 1. On the countertop 1, you see a mug 2.", FIRST_PROMPT),
        turn("take mug 2 from countertop 1", "You pick up the mug 2 from the countertop 1."),
        turn("", "Nothing happens.", parseable=False, text=""),  # empty reply: fail closed
        turn("go to sinkbasin 1", "You arrive at sinkbasin 1."),
    ]),
    Trajectory("g1", TASK, "pick_clean_then_place_in_recep", turns=[
        turn("go to countertop 1", "Nothing happens.", "Your task is to: x\nObservation: You see a countertop 1.\n"
             "Admissible actions: go to countertop 1"),
        turn("mug mug", "Nothing happens.", parseable=False),  # unparseable: fail closed
    ]),
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(CORPUS, extra_words=judge_vocabulary(SETTINGS))


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.set_num_threads(1)
    return build_tiny_model(SPEC, tokenizer, seed=3).eval()


def rigged(tokenizer, label_bias: list[float], other_bias: float = 0.0):
    """A tiny model whose head ignores its input: logits = bias (label tokens get `label_bias`)."""
    model = build_tiny_model(SPEC, tokenizer, seed=4).eval()
    head = torch.nn.Linear(SPEC.hidden, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(other_bias)
        head.bias[label_token_ids(tokenizer, SETTINGS.labels)] = torch.tensor(label_bias)
    model.set_output_embeddings(head)
    return model


def test_label_token_ids_read_lowercased_words_and_reject_clashes(tokenizer):
    expected = [tokenizer.convert_tokens_to_ids(w) for w in ("skip", "weak", "strong")]
    assert label_token_ids(tokenizer, ("Skip", "Weak", "Strong")) == expected
    assert len(set(expected)) == 3 and tokenizer.unk_token_id not in expected
    with pytest.raises(ValueError, match="share a first token.*distinct label words"):
        label_token_ids(tokenizer, ("Skip", "skip", "Strong"))  # the tokenizer lowercases
    with pytest.raises(ValueError, match="'Zyzzyva'.*extra_words"):
        label_token_ids(tokenizer, ("Skip", "Weak", "Zyzzyva"))  # unknown word -> unk
    with pytest.raises(ValueError, match="three non-empty words"):
        JudgeSettings(labels=("Skip", "Strong"))


@pytest.mark.parametrize("history", [-1, 0, 2])
def test_render_has_the_task_and_the_last_pairs_for_every_history_length(history):
    settings = JudgeSettings(history=history)
    for length in range(5):
        pairs = [(f"observation {k}", f"go to cabinet {k}") for k in range(length)]
        [message] = render_judge_messages(TASK, pairs, "You see a mug 1.", "take mug 1", "You pick up the mug 1.",
                                          settings)
        content = message["content"]
        assert message["role"] == "user" and f"The agent's task is to: {TASK}" in content
        shown = length if history == -1 else min(history, length)
        assert content.count("\nAction: go to cabinet") == shown
        assert all(f"Action: go to cabinet {k}\n" in content for k in range(length - shown, length))
        assert (length == 0 or shown == 0) == ("No earlier steps." in content)
        assert content.endswith("Answer with one word: Skip, Weak or Strong.")
        assert "Agent action: take mug 1\nFeedback: You pick up the mug 1.\n" in content


def test_template_file_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.txt.*judge/default.txt"):
        load_template(JudgeSettings(template=str(tmp_path / "absent.txt")))
    (tmp_path / "no_task.txt").write_text("Action: {action}\nAnswer: {labels}")
    with pytest.raises(ValueError, match="no {task} field"):
        load_template(JudgeSettings(template=str(tmp_path / "no_task.txt")))
    (tmp_path / "typo.txt").write_text("Task: {task} {acton}")
    with pytest.raises(ValueError, match=r"unknown fields \['acton'\]"):
        load_template(JudgeSettings(template=str(tmp_path / "typo.txt")))
    (tmp_path / "ok.txt").write_text("Task: {task}. {{literal}}")
    assert load_template(JudgeSettings(template=str(tmp_path / "ok.txt"))) == "Task: {task}. {{literal}}"


@pytest.mark.parametrize("label", [0, 1, 2])
def test_a_model_rigged_on_one_label_gives_it_probability_one(tokenizer, label):
    bias = [0.0, 0.0, 0.0]
    bias[label] = 30.0  # e^30 / (e^30 + 2) = 1 - 2e-13
    result = judge_turns(rigged(tokenizer, bias), tokenizer, TRAJECTORIES, SETTINGS, batch_size=2)
    assert result.turn_keys == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    assert result.valid_U.tolist() == [True, True, False, True, True, False]
    judged = result.probs_U_3[result.valid_U]
    assert torch.allclose(judged[:, label], torch.ones(4), atol=1e-6)
    assert torch.equal(result.probs_U_3[~result.valid_U], torch.tensor([[0.0, 0.0, 1.0]] * 2))  # fail closed
    names = ["skip", "weak", "strong"]
    assert judge_argmax_labels(result.probs_U_3, result.valid_U) == [names[label]] * 2 + ["strong"] + [names[label]] * 2 + ["strong"]


def test_renormalized_over_the_three_label_tokens_only(tokenizer):
    # Equal label logits: 1/3 each, although a non-label token holds almost all the mass.
    result = judge_turns(rigged(tokenizer, [0.0, 0.0, 0.0], other_bias=-5.0), tokenizer, TRAJECTORIES, SETTINGS)
    assert torch.allclose(result.probs_U_3[result.valid_U], torch.full((4, 3), 1 / 3), atol=1e-6)
    # Logits log 1, log 2, log 5 -> 1/8, 2/8, 5/8; other tokens at 50 change nothing.
    result = judge_turns(rigged(tokenizer, [0.0, math.log(2), math.log(5)], other_bias=50.0), tokenizer,
                         TRAJECTORIES, SETTINGS)
    assert torch.allclose(result.probs_U_3[result.valid_U], torch.tensor([[0.125, 0.25, 0.625]] * 4), atol=1e-6)


def test_one_padded_batch_equals_each_prompt_alone(tokenizer, model):
    result = judge_turns(model, tokenizer, TRAJECTORIES, SETTINGS, batch_size=3)
    label_ids = label_token_ids(tokenizer, SETTINGS.labels)
    first = TRAJECTORIES[0].turns
    # Turn 3 of trajectory 0, written out by hand: it saw turn 2's feedback; history = turns 1, 2.
    messages = render_judge_messages(
        TASK, [("You are in the middle of a room.", first[0].action), (first[0].feedback, first[1].action),
               (first[1].feedback, first[2].action)],
        first[2].feedback, "go to sinkbasin 1", "You arrive at sinkbasin 1.", SETTINGS)
    assert "Observation: You are in the middle of a room." not in messages[0]["content"]  # 2 pairs shown
    assert f"Observation: {first[1].feedback}\nAction: \n" in messages[0]["content"]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([ids])).logits[0, -1, label_ids].softmax(-1)
    torch.testing.assert_close(result.probs_U_3[3], alone, atol=1e-5, rtol=0)
    assert turn_observations(TRAJECTORIES[0], tokenizer.all_special_tokens)[0] == "You are in the middle of a room."
    assert turn_observations(TRAJECTORIES[1])[0] == "You see a countertop 1."
    # Every valid turn agrees with its own unpadded forward pass, whatever its batch.
    for batch_size in (1, 4):
        again = judge_turns(model, tokenizer, TRAJECTORIES, SETTINGS, batch_size=batch_size)
        torch.testing.assert_close(again.probs_U_3, result.probs_U_3, atol=1e-5, rtol=0)
    for group_tokens in (1, 120):  # a forward per prompt; a few short prompts per forward
        again = judge_turns(model, tokenizer, TRAJECTORIES, SETTINGS, batch_size=4, group_tokens=group_tokens)
        torch.testing.assert_close(again.probs_U_3, result.probs_U_3, atol=1e-5, rtol=0)
    spread = result.probs_U_3[result.valid_U]
    assert (spread - spread[0]).abs().max() > 1e-4  # distinct prompts give distinct rows


def test_alignment_with_collate_turn_keys(tokenizer, model):
    result = judge_turns(model, tokenizer, TRAJECTORIES, SETTINGS, trajectory_ids=[7, 3])
    assert result.turn_keys[:2] == [(7, 0), (7, 1)] and result.turn_keys[4:] == [(3, 0), (3, 1)]
    # Window-layout data in a shuffled order: collate numbers turns by first appearance.
    data = [Datum([1, 2, 9, 9], [0, 0, 1, 1], [-1, -1, t, t], [0.0] * 4, trajectory_index=i)
            for i, t in [(3, 1), (7, 2), (7, 0), (3, 0), (7, 3), (7, 1)]]
    batch = collate(data, pad_id=tokenizer.pad_token_id)
    assert batch["turn_keys_U"].tolist() == [[3, 1], [7, 2], [7, 0], [3, 0], [7, 3], [7, 1]]
    probs_U_3, valid_U = result.for_batch(batch["turn_keys_U"])
    rows = [5, 2, 0, 4, 3, 1]  # where each batch key sits in the judge's order
    assert torch.equal(probs_U_3, result.probs_U_3[rows])
    assert valid_U.tolist() == [False, False, True, True, True, True]
    by_key = {key: result.probs_U_3[u] for u, key in enumerate(result.turn_keys)}
    assert torch.equal(align_to_batch(by_key, batch["turn_keys_U"][2:4]), result.probs_U_3[[0, 4]])
    with pytest.raises(KeyError, match=r"\(0, 0\).*trajectory_ids"):
        align_to_batch(by_key, torch.tensor([[0, 0]]))
    assert isinstance(result, JudgeResult)


@pytest.fixture(scope="module")
def noisy(small_suite):
    """Noisy expert episodes on 6 train games of the real engine, and a tokenizer for them."""
    data = JudgeDataSettings(weak_prob=0.3, strong_prob=0.3, max_steps=12)
    episodes = play_noisy_episodes(small_suite, data, num_games=6, seed=0)
    corpus = [e.task for e in episodes] + [t.observation + " " + t.feedback for e in episodes for t in e.turns]
    return episodes, build_tokenizer(corpus, extra_words=judge_vocabulary(SETTINGS))


def test_judge_examples_from_the_real_engine(noisy, small_suite):
    episodes, tokenizer = noisy
    turns = [t for e in episodes for t in e.turns]
    counts = [sum(t.label == k for t in turns) for k in range(3)]
    assert len(turns) >= 50 and all(c >= 0.15 * len(turns) for c in counts), counts
    kinds = {t.kind for t in turns}
    assert kinds == {"expert", "off_plan", "invalid", "repeat"}
    for episode in episodes:
        for t, step in enumerate(episode.turns):
            previous = episode.turns[t - 1].action if t else None
            assert step.label == label_of(step.action, step.feedback, step.expert_action, previous)
            if t:  # what the agent saw is the engine's answer to the previous command
                assert step.observation == episode.turns[t - 1].feedback
            if step.kind == "invalid":
                assert step.feedback == INVALID_FEEDBACK and step.label == 2
            elif step.kind == "repeat":
                assert step.action == previous and step.label == 2
            elif step.kind == "off_plan":  # an admissible command: the engine accepts it
                assert step.feedback != INVALID_FEEDBACK and step.action != step.expert_action and step.label == 1
            elif step.action != previous:
                assert step.feedback != INVALID_FEEDBACK and step.label == 0
    messages, labels = episode_examples(episodes, tokenizer, SETTINGS)
    assert labels == [t.label for t in turns]
    first = episodes[0].turns[1]
    content = messages[1][0]["content"]
    assert episodes[0].task in content and f"Agent action: {first.action}\nFeedback: {first.feedback}" in content
    assert f"Observation: {episodes[0].turns[0].observation}\nAction: {episodes[0].turns[0].action}" in content


def test_judge_sft_data_replies_are_the_label_words(noisy, small_suite):
    _, tokenizer = noisy
    data = judge_sft_data(small_suite, tokenizer, SETTINGS, num_games=2, seed=1,
                          data=JudgeDataSettings(max_steps=5, num_workers=1))
    assert 2 <= len(data) <= 10  # 2 games, at most 5 turns each
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    replies = [[i for i, m in zip(d.token_ids, d.response_mask, strict=True) if m] for d in data]
    assert all(len(reply) == 2 and reply[1] == eot for reply in replies)  # one label word, end of turn
    words = {tokenizer.decode(reply[:1]) for reply in replies}
    assert words <= {"skip", "weak", "strong"} and len(words) >= 2


def test_judge_accuracy_of_an_always_strong_judge(noisy):
    episodes, tokenizer = noisy
    examples = episode_examples(episodes, tokenizer, SETTINGS)
    report = judge_accuracy(rigged(tokenizer, [0.0, 0.0, 9.0]), tokenizer, examples, SETTINGS)
    strong = sum(label == 2 for label in examples[1])
    assert report["count"] == len(examples[1]) and report["count_strong"] == strong
    assert report["all"] == pytest.approx(strong / len(examples[1]))
    assert (report["skip"], report["weak"], report["strong"]) == (0.0, 0.0, 1.0)
    # true-label probability: e^9 / (e^9 + 2) on Strong examples, 1 / (e^9 + 2) on the others
    high, low = math.exp(9) / (math.exp(9) + 2), 1 / (math.exp(9) + 2)
    assert report["true_label_prob"] == pytest.approx((strong * high + (len(examples[1]) - strong) * low) / len(examples[1]))


def test_turn_zero_observation_of_real_rollouts(small_suite, noisy):
    """The rollout keeps no initial observation; the judge reads it back from the first prompt."""
    _, tokenizer = noisy
    games = discover_games(small_suite, "valid_seen").games[:2]
    agent = build_tiny_model(SPEC, tokenizer, seed=5).eval()
    with EnvPool(num_workers=1, max_steps=3) as pool:
        initial = [s.text for s in pool.reset([g.gamefile for g in games])]
        for layout in ("window", "full"):
            trajectories = rollout(agent, tokenizer, pool, games, RolloutSettings(layout=layout, max_turns=2,
                                   max_new_tokens=4), PromptSettings(), seed=0)
            for trajectory, observation in zip(trajectories, initial, strict=True):
                seen = turn_observations(trajectory, tokenizer.all_special_tokens)
                assert seen == [observation] + [t.feedback for t in trajectory.turns[:-1]]
            result = judge_turns(agent, tokenizer, trajectories, SETTINGS)
            assert len(result.turn_keys) == sum(len(t.turns) for t in trajectories) == 4
            assert torch.allclose(result.probs_U_3.sum(-1), torch.ones(4))
