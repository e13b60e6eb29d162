"""``python -m bioexp.data.check data=cardiac_us [data.root=...]``: the pre-training checklist of a data set.

Composes the same config as ``bioexp.train`` (any override works), builds the datamodule and prints its
``check()`` results, one line each; exits 1 when an item fails. Writes nothing. A datamodule whose
``check`` takes ``composition`` gets the model's (``model.composition``), so it can say whether the
model composes actions the way the data's labels do.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence

from bioexp.errors import BioexpError


def run_checks(overrides: Sequence[str]) -> list[tuple[bool, str]]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from omegaconf import OmegaConf, open_dict

    import bioexp.utils.resolvers  # noqa: F401
    from bioexp.train import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)  # ${hydra:...} in paths resolves as in a run
    with open_dict(cfg):
        del cfg["hydra"]
    datamodule = instantiate(cfg.data, _convert_="all")
    if not hasattr(datamodule, "check"):
        raise BioexpError(f"{type(datamodule).__name__} has no pre-training check")
    composition = OmegaConf.select(cfg, "model.composition")
    if composition is not None and "composition" in inspect.signature(datamodule.check).parameters:
        return datamodule.check(composition=composition)
    return datamodule.check()


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        results = run_checks(argv)
    except BioexpError as exc:
        print(f"bioexp: error: {exc}", file=sys.stderr)
        return 1
    for passed, message in results:
        print(f"[{'ok' if passed else 'FAIL'}] {message}")
    failed = sum(not passed for passed, _ in results)
    print(f"{len(results) - failed} of {len(results)} checks passed" + ("" if not failed else "; fix the FAIL lines"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
