"""Refresh the cache entries shipped in `assets/` (the CLI on top of harness/cache.py).

harness/cache.py says what is shipped and how the cache finds it. After changing a default of
the suite or the tiny pair, build it once and refresh the shipment:

    python -m harness mode=prepare && python -m harness.default.shipped
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from pathlib import Path

from harness.cache import assets_root, cache_root
from harness.default.prepare import EPISODES_FILE


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
        # a DAgger stage's labelled episodes only serve to build a further round here: not shipped
        shutil.copytree(cache / "tiny" / key, target, ignore=shutil.ignore_patterns(EPISODES_FILE))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """Ship the default config's suite and tiny pair (built in the cache) into assets/."""
    from hydra import compose, initialize_config_dir
    from transformers.utils import logging as hf_logging

    from harness.config import register_configs
    from harness.run import CONF_DIR, data_root, load_models

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
    written = ship(cache_root(cfg.cache_dir), root.name, keys)
    for path in written:
        print(f"shipped {path.relative_to(assets_root().parent)}")
    stale = old - {p.name for p in written}
    if stale:
        print("no longer used by the default config (delete them with git rm): " + ", ".join(sorted(stale)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
