"""Cache entries shipped in assets/: the default config finds them, copies are byte-identical,
a forbidden build is a clear error, and a hostile archive is refused."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness import cache
from harness.default import shipped
from harness.default.prepare import _cached
from harness.envs.generate import SuiteSpec, ensure_suite

REPO = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_default_config_is_shipped(tmp_path):
    """The README's promise: a fresh machine gets the default suite and pair without building
    (SAGE_OPD_BUILD=0 turns any build into an error, so a stale shipment fails here in seconds)."""
    env = {**os.environ, "SAGE_OPD_CACHE": str(tmp_path / "cache"), "SAGE_OPD_BUILD": "0", "SAGE_OPD_SHIPPED": "1"}
    done = subprocess.run([sys.executable, "-m", "harness", "mode=prepare", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = done.stdout + done.stderr
    assert out.count("copying the shipped build") == 2  # the teacher and the student
    (suite,) = [p for p in (tmp_path / "cache" / "games").iterdir() if not p.name.startswith(".")]
    summary = json.loads((suite / "suite.json").read_text())
    assert summary["hash"] == suite.name
    assert summary["counts"]["valid_seen"]["total"] == 140 and summary["counts"]["valid_unseen"]["total"] == 134
    for entry in (tmp_path / "cache" / "tiny").iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            assert _files(entry) == _files(REPO / "assets" / "tiny" / entry.name)


def test_a_shipped_suite_unpacks_byte_identical_and_a_missing_one_is_not_built(small_suite, tmp_path, monkeypatch):
    cache = small_suite.parent.parent
    monkeypatch.setenv("SAGE_OPD_ASSETS", str(tmp_path / "assets"))
    written = shipped.ship(cache, small_suite.name, keys=[])
    assert written == [tmp_path / "assets" / "games" / f"{small_suite.name}.tar.xz"]
    monkeypatch.setenv("SAGE_OPD_BUILD", "0")
    spec = SuiteSpec(seed=0, n_train=12, n_valid_seen=12, n_valid_unseen=12)
    root = ensure_suite(spec, cache_root=tmp_path / "fresh")
    assert root == tmp_path / "fresh" / "games" / small_suite.name
    assert _files(root) == _files(small_suite)
    # another spec: neither cached nor shipped, and building is forbidden
    with pytest.raises(RuntimeError, match=r"the game suite \w+ is neither in the cache nor shipped.*SAGE_OPD_BUILD"):
        ensure_suite(SuiteSpec(seed=1, n_train=6, n_valid_seen=6, n_valid_unseen=6), cache_root=tmp_path / "fresh")
    # SAGE_OPD_SHIPPED=0 ignores the shipment: the same spec must now be built, which is forbidden
    monkeypatch.setenv("SAGE_OPD_SHIPPED", "0")
    with pytest.raises(RuntimeError, match="forbids building"):
        ensure_suite(spec, cache_root=tmp_path / "other")


def test_a_shipped_model_entry_is_copied_not_built(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGE_OPD_ASSETS", str(tmp_path / "assets"))
    entry = tmp_path / "assets" / "tiny" / "abc123"
    (entry / "student").mkdir(parents=True)
    (entry / "student" / "model.safetensors").write_bytes(b"\x00\x01weights")
    (entry / "report.json").write_text(json.dumps({"student": {"params": 7}}))

    def build(tmp):
        raise AssertionError("a shipped entry must not be built")

    logs = []
    report = _cached(tmp_path / "cache", "abc123", build, log=logs.append)
    assert report == {"student": {"params": 7}}
    assert (tmp_path / "cache" / "abc123" / "student" / "model.safetensors").read_bytes() == b"\x00\x01weights"
    assert logs == [f"tiny abc123: copying the shipped build from {entry}"]
    # a key that is not shipped is built (and its report written)
    assert _cached(tmp_path / "cache", "def456", lambda tmp: {"built": 1}, log=logs.append) == {"built": 1}
    monkeypatch.setenv("SAGE_OPD_BUILD", "0")
    with pytest.raises(RuntimeError, match="the tiny model ghi789 is neither in the cache nor shipped"):
        _cached(tmp_path / "cache", "ghi789", build)


def test_an_archive_reaching_outside_the_suite_is_refused(tmp_path):
    archive = tmp_path / "evil.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        data = b"boom"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ValueError, match="refusing member '../outside.txt'"):
        cache.unpack_suite(archive, dest)
    assert not (tmp_path / "outside.txt").exists()


def test_the_judge_data_key_names_the_template_text_not_its_path(tmp_path):
    """Cache keys must not depend on where the repository is cloned (or the shipment never matches)."""
    from harness.default.judge_data import JudgeDataSettings, judge_data_key
    from harness.loop.judge import JudgeSettings

    text = (REPO / "conf" / "judge" / "default.txt").read_text()
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "b.txt").write_text(text)
    (tmp_path / "c.txt").write_text(text + "Answer now.\n")
    data = JudgeDataSettings()
    key_a, key_b, key_c = (judge_data_key(JudgeSettings(template=str(tmp_path / n)), data) for n in ("a.txt", "b.txt", "c.txt"))
    assert key_a == key_b and key_a != key_c
    assert str(tmp_path) not in key_a


def test_one_cache_root_for_everything(tmp_path, monkeypatch):
    """The config's cache_dir wins over $SAGE_OPD_CACHE, which wins over ~/.cache/sage-opd."""
    monkeypatch.setenv("SAGE_OPD_CACHE", str(tmp_path / "env"))
    assert cache.cache_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert cache.cache_root(None) == tmp_path / "env"
    monkeypatch.delenv("SAGE_OPD_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "sage-opd"
    assert cache.cache_root("~/elsewhere") == tmp_path / "home" / "elsewhere"


def test_ship_leaves_a_dagger_stages_episodes_behind(tmp_path):
    source = tmp_path / "cache"
    (source / "games" / "abc").mkdir(parents=True)
    (source / "games" / "abc" / "game.tw-pddl").write_text("g")
    stage = source / "tiny" / "teacher-k"
    (stage / "teacher").mkdir(parents=True)
    (stage / "teacher" / "model.safetensors").write_bytes(b"w")
    (stage / "report.json").write_text("{}")
    (stage / "dagger_episodes.jsonl").write_text('{"round": 0}\n')
    written = shipped.ship(source, "abc", ["teacher-k"], dest=tmp_path / "assets")
    assert [p.name for p in written] == ["abc.tar.xz", "teacher-k"]
    assert sorted(_files(tmp_path / "assets" / "tiny" / "teacher-k")) == ["report.json", "teacher/model.safetensors"]
