"""`python -m harness [overrides]` (one run) or `python -m harness -m method=sage,opd seed=0,1,2` (a sweep).

Hydra composes conf/ over the typed schema of harness/config.py; everything else is in run.py.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from harness.run import run

    result = run(cfg, HydraConfig.get().runtime.output_dir)
    unseen = result.get("eval", {}).get("valid_unseen", {}) if isinstance(result, dict) else {}
    return unseen.get("success")


if __name__ == "__main__":
    main()
