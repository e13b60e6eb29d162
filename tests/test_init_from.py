"""``init_from=``: a new run from a checkpoint's weights with a fresh optimiser and schedule (any task)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from bioexp.errors import BioexpError
from bioexp.train import train
from bioexp.utils.run import build_task
from tests.conftest import compose_cfg, data_overrides

SMALL = ["experiment=ep_prior_beats", "model.encoder.arch=xresnet1d18", "++model.encoder.stem_widths=[8,8,16]",
         "++model.encoder.block_widths=[16,16,32,32]", "trainer=cpu", "debug=limit", "callbacks.rich_progress_bar=null",
         "callbacks.embedding_probe=null", "callbacks.interval_agreement=null", "callbacks.reconstruction_plot=null",
         "callbacks.early_stopping=null", "test=false"]


def _run(tmp_path: Path, synth_root: Path, name: str, *overrides: str) -> Path:
    out = tmp_path / name
    train(compose_cfg([*data_overrides(synth_root, tmp_path / "cache"), *SMALL, *overrides], out))
    return out


def _lr(out: Path) -> list[float]:
    history = pd.read_csv(out / "csv" / "metrics.csv")
    return history.dropna(subset=["lr-AdamW"]).sort_values("epoch")["lr-AdamW"].tolist()


def test_init_from_loads_the_weights_and_starts_a_fresh_schedule(tmp_path, synth_root):
    first = _run(tmp_path, synth_root, "first", "trainer.max_epochs=3")
    assert _lr(first)[-1] < 0.5e-3  # cosine over 3 epochs from 1e-3
    ckpt = first / "checkpoints" / "last.ckpt"

    # the weights: exactly the checkpoint's
    cfg = compose_cfg([*data_overrides(synth_root, tmp_path / "cache"), *SMALL], tmp_path / "unit")
    model = build_task(cfg.model)
    model.init_weights_from(ckpt)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert model.state_dict().keys() == saved.keys()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)

    # the schedule: the configured LR at epoch 0, then cosine over this run's own epochs (no climbing back)
    again = _run(tmp_path, synth_root, "again", f"init_from={ckpt}", "trainer.max_epochs=3", "model.optimizer.lr=5e-4")
    lrs = _lr(again)
    assert lrs[0] == pytest.approx(5e-4) and len(lrs) == 3 and lrs == sorted(lrs, reverse=True), lrs
    assert pd.read_csv(again / "csv" / "metrics.csv")["epoch"].min() == 0


def test_init_from_rejects_what_does_not_fit(tmp_path, synth_root):
    first = _run(tmp_path, synth_root, "first", "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    ckpt = first / "checkpoints" / "last.ckpt"
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    cases = [
        ([f"init_from={tmp_path / 'missing.ckpt'}"], "checkpoint not found"),
        ([f"init_from={text}"], "is not a readable checkpoint"),
        ([f"init_from={plain}"], "holds no model weights"),
        ([f"init_from={ckpt}", "model.encoder.latent_dims.P=16"], r"does not fit this model: .*of other shape"),
        ([f"init_from={ckpt}", "model=ep_prior"], r"does not fit this model: .*missing"),
        ([f"init_from={ckpt}", f"ckpt_path={ckpt}"], "not both"),
    ]
    for overrides, message in cases:
        with pytest.raises(BioexpError, match=message):
            _run(tmp_path, synth_root, "bad", *overrides)
    with pytest.raises(BioexpError, match=r"is a bioexp\.tasks\.ep_prior\.EPPrior checkpoint but this run trains"):
        train(compose_cfg([*data_overrides(synth_root, tmp_path / "cache"), "trainer=cpu", "debug=fdr",
                           "model.net.arch=xresnet1d18", f"init_from={ckpt}"], tmp_path / "classifier"))
