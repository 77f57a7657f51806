"""Every config composes; bad overrides fail at start-up naming the field; a local sweep runs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

import methods
from harness.config import register_configs
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
    assert len(combos) == 8 * 2 * 4 * 4
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
