"""The exact engine speed-up (harness/envs/engine_cache.py) changes no byte of what the engine
returns: full transcripts with and without it, over every task type, are identical."""

from __future__ import annotations

import json
import os
import pickle
import zlib
from pathlib import Path

import pytest

from harness.bench.engine import INVALID_COMMANDS, compare, games_per_task_type, play_transcripts
from harness.envs import TASK_TYPES, EnvPool, discover_games
from harness.envs.engine_cache import kept_path, kept_result
from harness.envs.pool import default_num_workers


@pytest.mark.slow
def test_transcripts_identical_with_and_without_the_fast_engine(small_suite):
    # one game of every task type from each split: walkthrough to won, then 24 steps of seeded
    # random admissible play with an invalid command every 4th step
    gamefiles = games_per_task_type(small_suite, "train", 1) + games_per_task_type(small_suite, "valid_unseen", 1)
    assert len(gamefiles) == 2 * len(TASK_TYPES)
    result = compare(gamefiles, seed=3, random_steps=24)
    assert result["identical"] == result["games"] == 12  # unpatched == patched == patched over kept files
    grammars = {json.loads(Path(g).read_text())["grammar"] for g in gamefiles}
    assert result["kept_files"] == 2 * 12 + len(grammars)  # two translations a game, one parse a grammar
    assert result["steps"] > 12 * 24  # walkthroughs + random play, not a handful of steps


def test_transcripts_cover_wins_invalid_commands_and_feedback(small_suite):
    # what the comparison compares is the real thing: a won walkthrough, "Nothing happens." for
    # an invalid command, and the admissible lists, played with the patch in this process
    gamefile = games_per_task_type(small_suite, "valid_seen", 1)[0]
    (transcript,), times = play_transcripts([gamefile], patched=True, seed=0, random_steps=8, invalid_every=4)
    walkthrough_end = next(i for i, s in enumerate(transcript) if s.get("won"))
    assert transcript[walkthrough_end]["done"] is True
    invalid = [s for s in transcript if s.get("command") in INVALID_COMMANDS]
    assert len(invalid) == 2 and all(s["feedback"] == "Nothing happens." for s in invalid)
    assert all(s["admissible"] for s in transcript)
    assert len(times["reset"]) == 2 and len(times["load"]) == 1


def test_workers_run_the_fast_engine_only_when_asked(small_suite):
    game = discover_games(small_suite, "valid_seen").games[0].gamefile
    for fast in (True, False):
        with EnvPool(num_workers=2, max_steps=5, fast_engine=fast) as pool:
            pool.reset([game, game])
            assert [info["fast_engine"] for info in pool.worker_info()] == [fast, fast]


def test_default_num_workers_follows_the_slurm_allocation_then_the_affinity(monkeypatch):
    import os

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    assert default_num_workers() == 6
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert default_num_workers() == len(os.sched_getaffinity(0))


def test_kept_results_are_computed_once_and_recomputed_when_damaged(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"sas": "begin_version\n3\nend_version", "n": len(calls)}

    parts = ["pddl2sas", "False", "(domain)", "(problem)"]
    first = kept_result(tmp_path, "textworld", parts, compute)
    again = kept_result(tmp_path, "textworld", parts, compute)
    assert first == again == {"sas": "begin_version\n3\nend_version", "n": 1} and len(calls) == 1
    path = kept_path(tmp_path, "textworld", parts)
    assert pickle.loads(zlib.decompress(path.read_bytes())) == first
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    assert kept_path(tmp_path, "textworld", [*parts[:1], "True", *parts[2:]]) != path  # optimize is in the key
    path.write_bytes(b"not a compressed pickle")  # damaged: computed again and replaced
    assert kept_result(tmp_path, "textworld", parts, compute)["n"] == 2
    assert kept_result(tmp_path, "textworld", parts, compute)["n"] == 2 and len(calls) == 2
    blocked = tmp_path / "a file"
    blocked.write_text("")
    assert kept_result(blocked, "textworld", parts, compute)["n"] == 3  # cannot keep: still the result


def test_workers_keep_each_games_translations_and_grammar_in_the_given_folder(small_suite, tmp_path):
    games = [g.gamefile for g in discover_games(small_suite, "valid_seen").games[:2]]
    with EnvPool(num_workers=1, max_steps=5, engine_cache_dir=tmp_path) as pool:
        first = pool.reset(games)
    grammars = {json.loads(Path(g).read_text())["grammar"] for g in games}
    assert len(list(tmp_path.glob("*/*.pkl.z"))) == 2 * 2 + len(grammars)
    with EnvPool(num_workers=1, max_steps=5, engine_cache_dir=tmp_path) as pool:  # a later run reads them
        pool.preload(games)  # in a thread at the lowest priority; the worker itself stays at its own
        again = pool.reset(games)
        (info,) = pool.worker_info()
    assert pool.preloaded_resets == 2
    assert info["engine_cache_dir"] == str(tmp_path) and info["preload_nice"] == 19 and info["nice"] == os.nice(0)
    assert [s.text for s in again] == [s.text for s in first] and all(s.failed is None for s in again)
    assert [s.admissible for s in again] == [s.admissible for s in first]
