"""Cache entries shipped in the repository (`assets/`), so a fresh machine skips an hour of building.

The default game suite (about 4 min to generate here) and the default tiny pair (about an hour:
13.7 min of exploring-expert demonstrations, 20-25 min of teacher SFT, 17 min of student SFT)
are exactly what `ensure_suite` and `prepare_tiny` would build on this machine for the default
config; they are stored under the same keys as in the cache:

    assets/games/<suite hash>.tar.xz        the suite folder's contents
    assets/tiny/teacher-<key>/              the teacher (and the shared tokenizer) + report.json
    assets/tiny/<student key>/              the warm-start student + report.json

When the cache lacks an entry and `assets/` holds it under the same key, it is copied into the
cache (to a temporary name, then renamed) instead of being built. A key that differs (any knob
changed, another generator or prepare version) is built as before. Environment variables:

    SAGE_OPD_SHIPPED=0   ignore assets/ (build everything here)
    SAGE_OPD_BUILD=0     never build: a missing entry is an error (a cluster job that must not
                         spend an hour building on each node; the test that the shipped
                         entries still match the default config)

After changing a default of the suite or the pair, build it once and refresh the shipment:

    python -m harness mode=prepare && python -m harness.shipped
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def assets_root() -> Path:
    return Path(os.environ.get("SAGE_OPD_ASSETS") or ASSETS)


def _enabled() -> bool:
    return os.environ.get("SAGE_OPD_SHIPPED", "1") != "0"


def check_may_build(what: str, key: str) -> None:
    """Raise when SAGE_OPD_BUILD=0 forbids building `what` (not in the cache, not shipped)."""
    if os.environ.get("SAGE_OPD_BUILD", "1") == "0":
        raise RuntimeError(
            f"{what} {key} is neither in the cache nor shipped in {assets_root()}, and SAGE_OPD_BUILD=0 "
            "forbids building it. Unset SAGE_OPD_BUILD to build it here, or run `python -m harness "
            "mode=prepare` once with the same config (on one node) before the jobs that need it.")


def suite_archive(suite_hash: str) -> Path | None:
    path = assets_root() / "games" / f"{suite_hash}.tar.xz"
    return path if _enabled() and path.is_file() else None


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
    path = assets_root() / "tiny" / key
    return path if _enabled() and (path / "report.json").is_file() else None


def ship(cache: Path, suite_hash: str, keys: list[str], dest: Path | None = None) -> list[Path]:
    """Copy the suite `suite_hash` and the tiny entries `keys` from the cache into assets/."""
    dest = dest or assets_root()
    written = []
    games = dest / "games"
    games.mkdir(parents=True, exist_ok=True)
    archive = games / f"{suite_hash}.tar.xz"
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w:xz") as tar:
        source = cache / "games" / suite_hash
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    os.replace(tmp, archive)
    written.append(archive)
    for key in keys:
        target = dest / "tiny" / key
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(cache / "tiny" / key, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Ship the default config's suite and tiny pair (built in the cache) into assets/."""
    from hydra import compose, initialize_config_dir
    from transformers.utils import logging as hf_logging

    from harness.config import register_configs
    from harness.run import CONF_DIR, cache_dir, data_root, load_models

    hf_logging.disable_progress_bar()
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(sys.argv[1:] if argv is None else argv))
    os.environ["SAGE_OPD_SHIPPED"] = "0"  # resolve the cache's own entries, never the old shipment
    os.environ["SAGE_OPD_BUILD"] = "0"
    root, _ = data_root(cfg)
    _, info = load_models(cfg, root, log=lambda *a: None)
    keys = info["tiny_keys"]
    old = {p.name for p in (assets_root() / "tiny").glob("*")} | {p.name for p in (assets_root() / "games").glob("*")}
    written = ship(cache_dir(cfg), root.name, keys)
    for path in written:
        print(f"shipped {path.relative_to(assets_root().parent)}")
    stale = old - {p.name for p in written}
    if stale:
        print("no longer used by the default config (delete them with git rm): " + ", ".join(sorted(stale)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
