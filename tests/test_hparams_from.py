"""``hparams_from=<sweep result>``: train with a sweep's best parameters (any study), end to end through the CLI."""

from __future__ import annotations

import json

import pytest
import yaml
from omegaconf import OmegaConf

from bioexp.errors import BioexpError
from bioexp.utils.hparams import best_overrides, expand_argv, override_value
from tests.conftest import run_cli
from tests.test_csi_cohort import write_png_cohort

# What bioexp.sweep writes (optimization_results.yaml): Optuna's params keyed by their Hydra override.
RESULTS = {"name": "optuna", "study_name": "csi_optuna", "n_complete": 3, "n_failed": 0, "best_value": 0.41,
           "best_params": {"model/backbone": "custom_1", "model/optimizer": "sgd", "model.optimizer.lr": 0.00031,
                           "model.optimizer.weight_decay": 1.5e-06, "data.batch_size": 8, "model.dropout": 0.25}}


def test_values_round_trip_through_hydras_override_grammar():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for value in (0.00031, 1.5e-06, 8, True, None, "resnet50", "true", "12", "a b", "it's", "/tmp/x y/r.yaml"):
        parsed = parser.parse_override(f"k={override_value(value)}").value()
        assert parsed == value and type(parsed) is type(value), (value, parsed)


def test_argv_expansion_and_bad_files(tmp_path):
    path = tmp_path / "optimization_results.yaml"
    path.write_text(yaml.safe_dump(RESULTS, sort_keys=False))
    argv = ["train.py", "experiment=csi", f"hparams_from={tmp_path}", "model.dropout=0.1"]  # a sweep dir works too
    assert expand_argv(argv) == ["train.py", "experiment=csi", "model/backbone=custom_1", "model/optimizer=sgd",
                                 "model.optimizer.lr=0.00031", "model.optimizer.weight_decay=1.5e-06",
                                 "data.batch_size=8", f"++hparams_from='{path}'", "model.dropout=0.1"]
    assert expand_argv(["train.py", "seed=1"]) == ["train.py", "seed=1"]
    (tmp_path / "best.json").write_text(json.dumps({"best_params": {"model.dropout": 0.3}}))  # JSON is accepted
    assert best_overrides(tmp_path / "best.json") == ["model.dropout=0.3"]
    cases = {"missing.yaml": (None, "no such file"), "bad.yaml": ("a: [1,", "not YAML/JSON"),
             "empty.yaml": ("name: optuna\nn_complete: 0\n", "no best_params"),
             "multi.yaml": ("solutions: [{params: {a: 1}, values: [1, 2]}]\n", "multi-objective")}
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(BioexpError, match=message):
            expand_argv(["train.py", f"hparams_from={tmp_path / name}"])


def test_cli_trains_with_a_sweeps_best_params(tmp_path):
    root = write_png_cohort(tmp_path / "cohort", n=30)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "optimization_results.yaml").write_text(yaml.safe_dump(RESULTS, sort_keys=False))
    base = ["experiment=csi", "data=csi", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
            "data.image_size=32", "data.num_workers=0", "trainer=cpu", "callbacks.rich_progress_bar=null",
            "print_config=false", "debug=fdr", "logger=csv"]
    done = run_cli([*base, "hparams_from=sweep/optimization_results.yaml", "model.backbone.widths=[4,8,8,16,16]",
                    "model.dropout=0.1", "hydra.run.dir=run"], tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = OmegaConf.load(tmp_path / "run" / "resolved_config.yaml")
    assert cfg.model.backbone.name == "custom_1" and cfg.model.optimizer._target_ == "torch.optim.SGD"
    assert cfg.model.optimizer.lr == 0.00031 and cfg.model.optimizer.weight_decay == 1.5e-06
    assert cfg.data.batch_size == 8 and cfg.model.dropout == 0.1  # the command line wins over the file
    assert cfg.hparams_from == str(tmp_path / "sweep" / "optimization_results.yaml")
    saved = OmegaConf.load(tmp_path / "run" / ".hydra" / "overrides.yaml")
    assert "model/backbone=custom_1" in saved and "model.optimizer.lr=0.00031" in saved
    assert (tmp_path / "run" / "metrics.json").is_file()
    bad = run_cli([*base, "hparams_from=nowhere.yaml"], tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"bioexp: error: hparams_from={tmp_path / 'nowhere.yaml'}: no such file; give a sweep's "
        "optimization_results.yaml (in its multirun dir) or that dir"]
