"""``python -m bioexp.compare runs=[<run dir or ckpt>,...]``: test several checkpoints on their data, one table.

The binary-VAE A/B comparison: ``python -m bioexp.train -m experiment=bvae,bvae_ecc`` and then
``python -m bioexp.compare runs=[multirun/<date>_<time>]`` (a sweep dir stands for all its jobs; a run dir
for its best checkpoint). Each model is tested on its own checkpoint's datamodule and the test metrics
become one row of ``comparison.csv``/``comparison.md`` in ``out`` (default ``outputs/compare/<date>_<time>``).
The markdown adds, for every error rate, its relative reduction against the first row.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from bioexp.errors import BioexpError
from bioexp.utils.run import parse_options, report_user_errors

DEFAULTS = {"runs": [], "out": None, "accelerator": "cpu"}
ERROR_RATES = ("latent_ber", "latent_wer", "output_ber", "output_wer")


def best_checkpoint(run_dir: Path) -> Path:
    """A run dir's best checkpoint (from its ``metrics.json``, else its only ``epoch_*.ckpt``)."""
    summary = run_dir / "metrics.json"
    if summary.is_file():
        best = json.loads(summary.read_text()).get("best_checkpoint")
        if best and Path(best).is_file():
            return Path(best)
    found = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    if not found:
        raise BioexpError(f"no checkpoint in {run_dir}/checkpoints; pass a .ckpt file or a finished run dir")
    return found[-1]


def expand_runs(runs: list[str]) -> list[Path]:
    """Checkpoint files from checkpoint paths, run dirs and sweep dirs (their job dirs, in job order)."""
    checkpoints = []
    for run in map(Path, runs):
        if run.is_file():
            checkpoints.append(run)
        elif (run / "checkpoints").is_dir():
            checkpoints.append(best_checkpoint(run))
        elif run.is_dir():
            jobs = sorted((d for d in run.iterdir() if (d / "checkpoints").is_dir()),
                          key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
            if not jobs:
                raise BioexpError(f"{run} holds no run dirs with checkpoints; pass run dirs or .ckpt files")
            checkpoints += [best_checkpoint(d) for d in jobs]
        else:
            raise BioexpError(f"{run} does not exist; pass run dirs, sweep dirs or .ckpt files")
    return checkpoints


def test_checkpoint(path: Path, accelerator: str = "cpu") -> tuple[str, dict[str, float]]:
    """The model's table label and its test metrics (names without ``test/``) on its own test split."""
    import lightning as L
    from hydra.utils import get_class

    from bioexp.evaluate import load_checkpoint_meta
    from bioexp.tasks.base import task_class
    from bioexp.utils.run import scalar_metrics

    meta = load_checkpoint_meta(path)
    if not meta["provenance"].get("datamodule") or meta["datamodule_hparams"] is None:
        raise BioexpError(f"{path} does not record its data; compare checkpoints written by bioexp.train")
    model = task_class(meta["provenance"]["task"]).load_from_checkpoint(path, map_location="cpu", weights_only=True)
    datamodule = get_class(meta["provenance"]["datamodule"])(**meta["datamodule_hparams"])
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k.removeprefix("test/"): v for k, v in scalar_metrics(trainer.callback_metrics).items()
               if k.startswith("test/")}
    return getattr(model, "label", type(model).__name__), metrics


def comparison(checkpoints: list[Path], accelerator: str = "cpu") -> Any:
    """One row per checkpoint: its label, checkpoint path and every test metric."""
    import pandas as pd

    rows = []
    for path in checkpoints:
        label, metrics = test_checkpoint(path, accelerator)
        rows.append({"model": label, **metrics, "checkpoint": str(path)})
    return pd.DataFrame(rows).set_index("model")


def reductions(table: Any) -> Any:
    """Each error rate's relative reduction against the first row (0.8 = 80% fewer errors)."""
    columns = [c for c in table.columns if c.startswith(ERROR_RATES)]
    return (1 - table[columns] / table[columns].iloc[0]).iloc[1:]


def write(table: Any, out: Path) -> str:
    """``comparison.csv`` and ``comparison.md`` (the table, then the reductions); returns the markdown."""
    from bioexp.utils.collect import to_markdown

    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv")
    numbers = table.drop(columns="checkpoint").T.round(4)
    markdown = to_markdown(numbers)
    if len(table) > 1:
        markdown += f"\nRelative error-rate reduction against {table.index[0]}:\n\n"
        markdown += to_markdown(reductions(table).T.round(3))
    (out / "comparison.md").write_text(markdown, encoding="utf-8")
    return markdown


@report_user_errors
def main(argv: list[str] | None = None) -> Any:
    args = parse_options(DEFAULTS, argv)
    runs = [args.runs] if isinstance(args.runs, str) else list(args.runs)
    if not runs:
        raise BioexpError("runs is required: python -m bioexp.compare runs=[<run dir>,<run dir>] (or a sweep dir)")
    out = Path(args.out or Path("outputs") / "compare" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    table = comparison(expand_runs(runs), args.accelerator)
    print(write(table, out))
    print(f"wrote {out / 'comparison.csv'} and comparison.md")
    return table


if __name__ == "__main__":
    main()
