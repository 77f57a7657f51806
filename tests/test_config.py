"""Every config composes; bad overrides fail at start-up naming the field; a local sweep runs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

import methods
from harness.agent.prompt import PromptSettings
from harness.agent.sampler import RolloutSettings
from harness.config import (
    RENAMED,
    JudgeConfig,
    LoraConfig,
    PromptConfig,
    RolloutConfig,
    SuiteConfig,
    apply_renamed,
    register_configs,
    rollout_settings,
    to_plain,
)
from harness.envs.generate import SuiteSpec
from harness.loop.judge import JudgeSettings
from harness.models import LoraSettings
from harness.run import _method_knobs
from tests.hydra_utils import CONF, compose_config

REPO = Path(__file__).resolve().parents[1]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF) / group).glob("*.yaml"))


def test_one_method_file_per_registered_method():
    assert _options("method") == sorted(methods.available())


@pytest.mark.slow
def test_every_config_composes():
    """Each method x env x model x experiment (one Hydra context: composing is the cost)."""
    register_configs()
    combos = list(itertools.product(_options("method"), _options("env"), _options("model"), _options("experiment")))
    assert len(combos) == len(methods.available()) * 2 * 5 * 4
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for method, env, model, experiment in combos:
            cfg = compose(config_name="config", overrides=[f"method={method}", f"env={env}", f"model={model}",
                                                           f"experiment={experiment}"])
            assert cfg.experiment == experiment
            if experiment != "paper_gpu":  # paper_gpu pins env and model by design
                assert (cfg.env.name, cfg.model.name) == (env, model)
            # the method's knobs are accepted by the registry (a typo would raise here)
            assert methods.get(cfg.method.name, **_method_knobs(cfg)).name == method


def test_experiments_override_what_they_say():
    cfg = compose_config(["experiment=paper_gpu"])
    assert cfg.env.name == "alfworld" and cfg.model.name == "qwen3_8b_1p7b"
    assert cfg.prompt.answer_format == "think_action"
    smoke = compose_config(["experiment=smoke", "seed=3"])
    assert smoke.train.steps == 2 and smoke.seed == 3 and smoke.env.suite.n_train == 12


@pytest.mark.parametrize("override,field", [
    ("train.stepz=3", "stepz"),          # a typo
    ("train.steps=three", "steps"),      # a wrong type
    ("methd=sage", "methd"),
])
def test_bad_override_names_the_field(override, field):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as err:
        compose_config([override])
    assert field in str(err.value) + str(err.value.__cause__)


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["method=sagee"])
    assert "sage" in str(err.value) + str(err.value.__cause__)


def test_bad_method_knob_fails_before_any_work():
    cfg = compose_config(["method=opd", "method.estimator=fullkl"])
    with pytest.raises(ValueError, match="estimator"):
        methods.get(cfg.method.name, **_method_knobs(cfg))


@pytest.mark.parametrize("old,value", [("prompt.max_new_tokens", 7), ("train.temperature", 0.5), ("train.top_p", 0.9)])
def test_a_deprecated_name_still_works_and_says_the_new_one(old, value):
    cfg = compose_config(["experiment=smoke", f"{old}={value}"])
    new = RENAMED[old]
    with pytest.warns(FutureWarning, match=f"{old} is deprecated.*use {new}={value}"):
        apply_renamed(cfg, log=lambda *a: None)
    assert OmegaConf.select(cfg, new) == value and OmegaConf.select(cfg, old) is None
    assert getattr(rollout_settings(cfg), new.split(".")[1]) == value


def test_a_deprecated_name_overrides_what_a_model_file_set_under_the_new_key():
    cfg = compose_config(["model=tiny", "prompt.max_new_tokens=5"])  # tiny.yaml: rollout.max_new_tokens 12
    with pytest.warns(FutureWarning, match=r"it replaces rollout.max_new_tokens=12"):
        apply_renamed(cfg, log=lambda *a: None)
    assert cfg.rollout.max_new_tokens == 5


def test_rollout_section_reaches_the_settings_and_vllm_fails_clearly():
    cfg = compose_config(["experiment=smoke", "rollout.reuse_cache=false", "rollout.growing_cache=false",
                          "rollout.temperature=0.8"])
    train, evaluation = rollout_settings(cfg), rollout_settings(cfg, evaluation=True)
    assert (train.max_new_tokens, train.reuse_cache, train.growing_cache, train.temperature) == (8, False, False, 0.8)
    assert (train.layout, train.max_turns, train.greedy) == ("full", 6, False)  # model=tiny: full; smoke: 6 steps
    assert (evaluation.greedy, evaluation.temperature, evaluation.reuse_cache) == (True, 0.4, False)
    with pytest.raises(ValueError, match="rollout.backend=vllm: vllm is not installed and not supported"):
        rollout_settings(compose_config(["rollout.backend=vllm"]))
    with pytest.raises(ValueError, match="rollout.backend must be one of"):
        rollout_settings(compose_config(["rollout.backend=sglang"]))


def test_train_max_turns_cuts_training_rollouts_only():
    cfg = compose_config(["experiment=smoke", "train.max_turns=4"])  # smoke: env.max_steps 6
    assert (rollout_settings(cfg).max_turns, rollout_settings(cfg, evaluation=True).max_turns) == (4, 6)
    assert rollout_settings(compose_config(["experiment=smoke", "train.max_turns=null"])).max_turns == 6
    assert rollout_settings(compose_config(["experiment=smoke", "train.max_turns=15"])).max_turns == 6  # a cap
    with pytest.raises(ValueError, match=r"train.max_turns must be >= 1 \(or null: env.max_steps\), got 0"):
        rollout_settings(compose_config(["experiment=smoke", "train.max_turns=0"]))


@pytest.mark.parametrize("schema,component,config_only", [
    (LoraConfig, LoraSettings, {"enabled": False}), (JudgeConfig, JudgeSettings, {"batch_size": 32}),
    (SuiteConfig, SuiteSpec, {}), (PromptConfig, PromptSettings, {"layout": "window", "max_new_tokens": None}),
])
def test_each_config_section_holds_its_components_own_defaults(schema, component, config_only):
    own = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(component()).items()}
    assert to_plain(schema) == own | config_only
    # the defaults runs used before the sections were composed (LoRA: the Hydra values)
    assert (LoraSettings().dropout, LoraSettings().target_modules) == (0.05, ("q_proj", "k_proj", "v_proj", "o_proj"))


def test_rollout_section_defaults_are_the_samplers():
    assert to_plain(RolloutConfig) == {"backend": "hf", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 24,
                                       "reuse_cache": True, "growing_cache": True}
    assert (RolloutSettings().max_new_tokens, RolloutSettings().layout) == (24, "window")


def test_cfg_job_prints_the_resolved_config():
    out = subprocess.run([sys.executable, "-m", "harness", "--cfg", "job", "experiment=smoke"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "experiment: smoke" in out and "envs_per_step: 2" in out


@pytest.mark.slow
def test_local_sweep_of_three_methods(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "harness", "-m", "method=sage,opd,no_conf", "experiment=smoke",
           f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = sorted(tmp_path.glob("*/result.json"))
    assert len(results) == 3
    records = [json.loads(p.read_text()) for p in results]
    assert sorted(r["method"] for r in records) == ["no_conf", "opd", "sage"]
    assert all(r["status"] == "complete" and set(r["eval"]) == {"valid_seen", "valid_unseen"} for r in records)
    for run_dir in (p.parent for p in results):
        assert (run_dir / "metrics.jsonl").exists() and (run_dir / ".hydra" / "config.yaml").exists()
        assert (run_dir / "checkpoints" / "latest").exists() and (run_dir / "config.json").exists()
