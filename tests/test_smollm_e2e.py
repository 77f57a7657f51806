"""The real-LLM path end to end: SmolLM2-135M-Instruct (LoRA student, teacher at temperature 2)
trains one step of opd and of sage through `python -m harness`, in the think_action format with
the window layout and the admissible list, evaluates, and `python -m analysis` reads the runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.agent.trajectory import Trajectory, Turn
from harness.loop.judge import JudgeSettings, judge_turns

pytestmark = [pytest.mark.llm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
# The smoke suite; 2 games x 2 turns x 16 tokens per step, 1 game per split in the evaluation.
OVERRIDES = ["experiment=smoke", "model=smollm2_e2e", "method.temperature=2.0", "env.max_steps=2",
             "rollout.max_new_tokens=16", "train.steps=1", "train.envs_per_step=2", "train.micro_batch_size=2",
             "eval.max_games=1"]



@pytest.fixture(scope="module")
def sweep(gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2_sweep")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "harness", "-m", "method=opd,sage", *OVERRIDES,
                           f"hydra.sweep.dir={out}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {json.loads((p / "result.json").read_text())["method"]: p for p in out.glob("*_seed0")}, out


def test_both_methods_train_a_step_with_a_real_loss(sweep):
    runs, _ = sweep
    assert sorted(runs) == ["opd", "sage"]
    for method, run_dir in runs.items():
        record = json.loads((run_dir / "result.json").read_text())
        assert record["status"] == "complete" and record["config"]["prompt"]["answer_format"] == "think_action"
        assert record["config"]["prompt"]["layout"] == "window" and record["config"]["prompt"]["show_admissible"]
        (line,) = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert math.isfinite(line["loss"]) and line["loss"] > 0, method  # the teacher at temperature 2
        assert line["episodes"] == 2 and line["turns"] == 4 and line["data"] == 4  # window: one datum a turn
        assert 0 <= line["invalid_action_rate"] <= 1
        if method == "sage":  # judge probabilities: the label fractions of a distribution over 3 labels
            fractions = [line[f"label_frac_{k}"] for k in ("skip", "weak", "strong")]
            assert all(0 <= f <= 1 for f in fractions) and sum(fractions) == pytest.approx(1.0)
        adapter = load_file(str(run_dir / "checkpoints" / "step-1" / "model" / "adapter_model.safetensors"))
        lora_b = [t for name, t in adapter.items() if "lora_B" in name]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b), method  # B starts at 0: the step moved it


def test_every_turn_is_parsed_or_counted_invalid(sweep):
    runs, _ = sweep
    for run_dir in runs.values():
        record = json.loads((run_dir / "result.json").read_text())
        episodes = [json.loads(x) for x in (run_dir / "eval_episodes.jsonl").read_text().splitlines()]
        assert sorted(e["split"] for e in episodes) == ["valid_seen", "valid_unseen"]
        for split in ("valid_seen", "valid_unseen"):
            turns = [t for e in episodes if e["split"] == split for t in e["turns"]]
            assert 1 <= len(turns) <= 2 and all(isinstance(t["valid"], bool) and t["feedback"] for t in turns)
            invalid = sum(not t["valid"] for t in turns) / len(turns)
            assert record["eval"][split]["invalid_action_rate"] == pytest.approx(invalid)


def test_analysis_reads_the_runs(sweep):
    _, out = sweep
    done = subprocess.run([sys.executable, "-m", "analysis", str(out), "--out", str(out / "analysis")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| OPD |" in done.stdout and "| SAGE-OPD |" in done.stdout
    assert (out / "analysis" / "runs.csv").read_text().count("\n") == 3  # a header and two runs


def test_smollm2_judge_gives_probabilities_of_parsed_turns(gguf):
    # SmolLM2-135M rarely writes <action> tags, so its own turns mostly fail closed; judge
    # hand-written parseable turns with the same teacher and tokenizer instead.
    from harness.models import SMOLLM2_PRESET, load_model, load_tokenizer

    teacher, tokenizer = load_model(SMOLLM2_PRESET, device="cpu"), load_tokenizer(SMOLLM2_PRESET)
    turns = [Turn(prompt_text="Observation: You are in the middle of a room.\n", response_ids=[1],
                  response_text=f"<think>x</think><action>{a}</action>", action=a, feedback=f, admissible=[a],
                  parseable=True) for a, f in (("go to countertop 1", "You arrive at countertop 1."),
                                                 ("look", "Nothing happens."))]
    result = judge_turns(teacher, tokenizer, [Trajectory("g", "put a mug in sinkbasin.", "pick_and_place_simple",
                                                         turns=turns)], JudgeSettings())
    assert result.valid_U.tolist() == [True, True] and result.probs_U_3.shape == (2, 3)
    assert torch.all(result.probs_U_3 > 0) and torch.allclose(result.probs_U_3.sum(-1), torch.ones(2))
