"""``python -m bioexp.compare runs=[<run dir or ckpt>,...]``: test several checkpoints on their data, one table.

The binary-VAE A/B comparison: ``python -m bioexp.train -m experiment=bvae,bvae_ecc`` and then
``python -m bioexp.compare runs=[multirun/<date>_<time>]`` (a sweep dir stands for all its jobs; a run dir
for its best checkpoint). Each model is tested on its own checkpoint's datamodule and the test metrics
become one row of ``comparison.csv``/``comparison.md`` in ``out`` (default ``outputs/compare/<date>_<time>``).
The markdown adds, for every error rate, its relative reduction against the first row. Binary VAEs add
``code_R`` and, beside each measured ``latent_ber_eps<ε>``, the theoretical ``latent_ber_theory_eps<ε>`` of
majority voting (R=2 rows get a note: a majority of two corrects nothing).
"""

from __future__ import annotations

import inspect
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from bioexp.errors import BioexpError
from bioexp.utils.run import parse_options, report_user_errors

DEFAULTS = {"runs": [], "out": None, "accelerator": "cpu"}
ERROR_RATES = ("latent_ber", "latent_wer", "output_ber", "output_wer")
LOADING_KEYS = ("batch_size", "num_workers", "pin_memory", "persistent_workers")
log = logging.getLogger(__name__)


def best_checkpoint(run_dir: Path) -> Path:
    """A run dir's best checkpoint, as its ``metrics.json`` records it (found by name in ``checkpoints/`` when
    the run dir was moved); a run without that record is used only when it holds a single ``epoch_*.ckpt``."""
    summary = run_dir / "metrics.json"
    if summary.is_file():
        best = json.loads(summary.read_text()).get("best_checkpoint")
        if best:
            for candidate in (Path(best), run_dir / "checkpoints" / Path(best).name):
                if candidate.is_file():
                    return candidate
            raise BioexpError(f"{run_dir}/metrics.json names the best checkpoint {best}, which is gone; "
                              "pass the .ckpt file to compare instead")
    found = sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"))
    if len(found) != 1:
        detail = "none" if not found else f"{len(found)}: {', '.join(p.name for p in found)}"
        raise BioexpError(f"{run_dir} records no best checkpoint (no finished metrics.json) and holds {detail} "
                          "epoch_*.ckpt files; pass the .ckpt file to compare")
    log.warning("%s has no best checkpoint on record (no finished metrics.json); comparing its only checkpoint %s",
                run_dir, found[0].name)
    return found[0]


def expand_runs(runs: list[str]) -> list[Path]:
    """Checkpoint files from checkpoint paths, run dirs and sweep dirs (their job dirs, in job order)."""
    checkpoints = []
    for run in map(Path, runs):
        if run.is_file():
            checkpoints.append(run)
        elif (run / "checkpoints").is_dir():
            checkpoints.append(best_checkpoint(run))
        elif run.is_dir():
            dirs = sorted((d for d in run.iterdir() if d.is_dir() and not d.name.startswith(".")),
                          key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))
            jobs = [d for d in dirs if (d / "checkpoints").is_dir()]
            if not jobs:
                raise BioexpError(f"{run} holds no run dirs with checkpoints; pass run dirs or .ckpt files")
            skipped = [d.name for d in dirs if d.name.isdigit() and d not in jobs]
            if skipped:  # a failed job leaves a numbered dir without checkpoints: its row would be missing
                log.warning("%s: job dirs %s have no checkpoints (failed or unfinished jobs); comparing the other %d",
                            run, ", ".join(skipped), len(jobs))
            checkpoints += [best_checkpoint(d) for d in jobs]
        else:
            raise BioexpError(f"{run} does not exist; pass run dirs, sweep dirs or .ckpt files")
    return checkpoints


def test_checkpoint(path: Path, accelerator: str = "cpu") -> tuple[str, dict[str, float], dict[str, Any]]:
    """The model's table label, its test metrics (names without ``test/``) on its own test split, and which
    data that was."""
    import lightning as L
    from hydra.utils import get_class

    from bioexp.evaluate import load_checkpoint_meta
    from bioexp.tasks.base import task_class
    from bioexp.utils.run import scalar_metrics

    meta = load_checkpoint_meta(path)
    if not meta["provenance"].get("datamodule") or meta["datamodule_hparams"] is None:
        raise BioexpError(f"{path} does not record its data; compare checkpoints written by bioexp.train")
    model = task_class(meta["provenance"]["task"]).load_from_checkpoint(path, map_location="cpu", weights_only=True)
    datamodule_class = get_class(meta["provenance"]["datamodule"])
    warn_unrecorded_options(path, datamodule_class, meta["datamodule_hparams"])
    datamodule = datamodule_class(**meta["datamodule_hparams"])
    trainer = L.Trainer(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k.removeprefix("test/"): v for k, v in scalar_metrics(trainer.callback_metrics).items()
               if k.startswith("test/")}
    if hasattr(model, "expected_error_rates"):
        metrics.update(model.expected_error_rates())
    return getattr(model, "label", type(model).__name__), metrics, data_identity(meta["datamodule_hparams"])


def warn_unrecorded_options(path: Path, datamodule_class: type, hparams: dict[str, Any]) -> list[str]:
    """WARN about data options the checkpoint predates: their current defaults may select other test images
    than the model was trained with (e.g. ``split`` of MNIST checkpoints from before the official split)."""
    unrecorded = [name for name in inspect.signature(datamodule_class).parameters if name not in hparams]
    if unrecorded:
        log.warning("%s was written before data option(s) %s existed; testing with their current defaults",
                    path, ", ".join(unrecorded))
    return unrecorded


def warn_different_data(identities: list[dict[str, Any]]) -> list[str]:
    """WARN (and return them) when the rows' data settings differ: their test figures are then not comparable."""
    differing = sorted({k for d in identities for k in d if any(e.get(k) != d.get(k) for e in identities)})
    if differing:
        log.warning("the compared checkpoints were tested on different data (%s differ): the rows are not "
                    "comparable", ", ".join(f"data.{k}" for k in differing))
    return differing


def data_identity(hparams: dict[str, Any]) -> dict[str, Any]:
    """The datamodule settings that decide which images are tested (not how they are loaded)."""
    return {k: v for k, v in hparams.items() if k not in LOADING_KEYS}


def comparison(checkpoints: list[Path], accelerator: str = "cpu") -> Any:
    """One row per checkpoint: its label, checkpoint path and every test metric (theoretical error rates
    next to the measured ones). Checkpoints tested on different data are compared with a WARNING."""
    import pandas as pd

    rows, data = [], []
    for path in checkpoints:
        label, metrics, identity = test_checkpoint(path, accelerator)
        rows.append({"model": label, **metrics, "checkpoint": str(path)})
        data.append(identity)
    warn_different_data(data)
    table = pd.DataFrame(rows).set_index("model")
    theory = [c for c in table.columns if "_theory_" in c]
    order = [c for c in table.columns if c not in theory]
    for column in theory:  # right after its measured column
        measured = column.replace("_theory", "")
        order.insert(order.index(measured) + 1 if measured in order else len(order), column)
    return table[order]


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
    if "code_R" in table.columns and (table["code_R"] == 2).any():
        markdown += ("\nR=2 (" + "; ".join(table.index[table["code_R"] == 2]) + "): a majority of two copies ties "
                     "whenever one flips, so it corrects no channel error: its theoretical decoded-bit error rate "
                     "(latent_ber_theory) equals the channel's eps, as without a code.\n")
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
