"""The cache, bottom layer: its root, its file locks, and the entries shipped in `assets/`.

Everything that caches (the game suite, the tiny pair, converted model presets) finds the
root and takes its locks here; this module imports nothing of the project, so every layer may
use it. `harness/default/shipped.py` (the CLI that refreshes `assets/`) sits on top of it.

The default game suite (about 4 min to generate here) and the default tiny pair (about an hour)
are shipped in the repository under the same keys as in the cache:

    assets/games/<suite hash>.tar.xz        the suite folder's contents
    assets/tiny/teacher-<key>/              the teacher (and the shared tokenizer) + report.json
    assets/tiny/<student key>/              the warm-start student + report.json

When the cache lacks an entry and `assets/` holds it under the same key, it is copied into the
cache instead of being built; a key that differs is built as before. Environment variables:

    SAGE_OPD_CACHE=DIR   the cache root when the config's cache_dir is unset (default ~/.cache/sage-opd)
    SAGE_OPD_ASSETS=DIR  read shipped entries from DIR instead of assets/
    SAGE_OPD_SHIPPED=0   ignore assets/ (build everything here)
    SAGE_OPD_BUILD=0     never build: a missing entry is an error (a cluster job that must not
                         spend an hour building on each node)
"""

from __future__ import annotations

import fcntl
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: `cache_dir` (the config's), else $SAGE_OPD_CACHE, else ~/.cache/sage-opd."""
    return Path(cache_dir or os.environ.get("SAGE_OPD_CACHE") or Path.home() / ".cache" / "sage-opd").expanduser()


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive file lock on `path` (created with its folder): concurrent jobs of a
    sweep wait for the one that builds a shared entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def assets_root() -> Path:
    """Where shipped entries are read from: $SAGE_OPD_ASSETS, else the repository's assets/."""
    return Path(os.environ.get("SAGE_OPD_ASSETS") or ASSETS)


def _shipped_enabled() -> bool:
    return os.environ.get("SAGE_OPD_SHIPPED", "1") != "0"


def check_may_build(what: str, key: str) -> None:
    """Raise when SAGE_OPD_BUILD=0 forbids building `what` (not in the cache, not shipped)."""
    if os.environ.get("SAGE_OPD_BUILD", "1") == "0":
        raise RuntimeError(
            f"{what} {key} is neither in the cache nor shipped in {assets_root()}, and SAGE_OPD_BUILD=0 "
            "forbids building it. Unset SAGE_OPD_BUILD to build it here, or run `python -m harness "
            "mode=prepare` once with the same config (on one node) before the jobs that need it.")


def suite_archive(suite_hash: str) -> Path | None:
    """The shipped archive of the game suite `suite_hash`, if there is one (and shipping is on)."""
    path = assets_root() / "games" / f"{suite_hash}.tar.xz"
    return path if _shipped_enabled() and path.is_file() else None


def unpack_suite(archive: Path, dest: Path) -> None:
    """Extract a shipped suite into `dest` (an empty temporary folder)."""
    with tarfile.open(archive, "r:xz") as tar:
        for member in tar.getmembers():  # only plain files and folders, inside dest
            target = (dest / member.name).resolve()
            if not (member.isfile() or member.isdir()) or not target.is_relative_to(dest.resolve()):
                raise ValueError(f"{archive}: refusing member {member.name!r} (not a plain file inside the suite)")
        # members checked above; the "data" filter (Python >= 3.10.12 / 3.11.4) also drops odd modes
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))


def model_entry(key: str) -> Path | None:
    """The shipped tiny-model entry `key` (a folder with report.json), if there is one."""
    path = assets_root() / "tiny" / key
    return path if _shipped_enabled() and (path / "report.json").is_file() else None
