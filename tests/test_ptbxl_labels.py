"""PTB-XL label aggregation and folds on the real metadata (3,028 real rows, the real statement table)."""

from __future__ import annotations

import pandas as pd
import pytest

from bioexp.data.ptbxl import (
    LABEL_SETS,
    aggregate_labels,
    labelled_mask,
    load_database,
    load_statements,
    select_labels,
    task_labels,
)
from bioexp.errors import BioexpError, DataNotFoundError
from tests.conftest import shared_data


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("meta")
    (root / "ptbxl_database.csv").write_bytes(shared_data("ptbxl-meta", "ptbxl_database_sample.csv").read_bytes())
    (root / "scp_statements.csv").write_bytes(shared_data("ptbxl-meta", "scp_statements.csv").read_bytes())
    return load_database(root), load_statements(root)


def test_database_parses_scp_codes_into_dicts(real):
    db, statements = real
    assert len(db) == 3028 and db.index.name == "ecg_id"
    assert db.loc[15513, "scp_codes"] == {"AFLT": 100.0, "AFIB": 0.0}
    assert len(statements) == 71


def test_superdiagnostic_aggregation_matches_the_benchmark(real):
    db, statements = real
    labels = aggregate_labels(db["scp_codes"], statements, "superdiagnostic")
    assert labels.loc[18756] == ["MI", "STTC"]  # IMI, ASMI -> MI; ISCAL -> STTC; ABQRS/AFIB are not diagnostic
    assert labels.loc[15513] == []              # rhythm statements only
    assert labels.loc[11128] == ["NORM"]
    kept, classes, y = select_labels(labels)
    assert classes == ["CD", "HYP", "MI", "NORM", "STTC"]
    assert len(kept) == 2935 and y.shape == (2935, 5)
    assert (y.sum(axis=1) >= 1).all()
    assert y[kept.index.get_loc(18756)].tolist() == [0, 0, 1, 0, 1]


@pytest.mark.parametrize(("label_set", "n_records", "n_classes"), [
    ("all", 3028, 70), ("diagnostic", 2935, 44), ("subdiagnostic", 2935, 23), ("superdiagnostic", 2935, 5),
    ("form", 1640, 18), ("rhythm", 2958, 12)])
def test_every_label_set_on_the_real_sample(real, label_set: str, n_records: int, n_classes: int):
    db, statements = real
    kept, classes, y = select_labels(aggregate_labels(db["scp_codes"], statements, label_set))
    assert (len(kept), len(classes)) == (n_records, n_classes)
    assert classes == sorted(classes) and y.sum() == sum(len(v) for v in kept)


def test_form_and_rhythm_labels_of_a_known_record(real):
    db, statements = real
    assert aggregate_labels(db["scp_codes"], statements, "form").loc[18756] == ["ABQRS"]
    assert aggregate_labels(db["scp_codes"], statements, "rhythm").loc[18756] == ["AFIB"]
    assert aggregate_labels(db["scp_codes"], statements, "subdiagnostic").loc[18756] == ["AMI", "IMI", "ISCA"]


# Expected from the benchmark's compute_label_aggregations + select_data (helme/ecg_ptbxl_benchmarking,
# code/utils/utils.py), run on this sample: records kept, classes, positive labels, records in folds 1-8 / 9 / 10.
# select_data filters labels seen <= min_samples times for every task except `diagnostic`, which it never filters.
BENCHMARK = {
    (0, "all"): (3028, 70, 9527, 2432, 292, 304),
    (0, "diagnostic"): (2935, 44, 4855, 2353, 286, 296),
    (0, "subdiagnostic"): (2935, 23, 4751, 2353, 286, 296),
    (0, "superdiagnostic"): (2935, 5, 4217, 2353, 286, 296),
    (0, "form"): (1640, 18, 2385, 1331, 155, 154),
    (0, "rhythm"): (2958, 12, 2995, 2380, 285, 293),
    (50, "all"): (2995, 31, 8887, 2402, 289, 304),
    (50, "diagnostic"): (2935, 44, 4855, 2353, 286, 296),
    (50, "subdiagnostic"): (2922, 15, 4640, 2341, 285, 296),
    (50, "superdiagnostic"): (2935, 5, 4217, 2353, 286, 296),
    (50, "form"): (1584, 11, 2270, 1283, 152, 149),
    (50, "rhythm"): (2873, 4, 2873, 2306, 281, 286),
}


@pytest.mark.parametrize(("min_samples", "label_set"), list(BENCHMARK))
def test_task_labels_equal_the_benchmarks(real, min_samples: int, label_set: str):
    db, statements = real
    kept, classes, y = task_labels(db["scp_codes"], statements, label_set, min_samples)
    folds = db.loc[kept.index, "strat_fold"]
    got = (len(kept), len(classes), int(y.sum()), int((folds <= 8).sum()), int((folds == 9).sum()),
           int((folds == 10).sum()))
    assert got == BENCHMARK[min_samples, label_set]
    assert classes == sorted(classes) and labelled_mask(y).all()
    assert y.sum() == sum(len(v) for v in kept)


def test_min_samples_drops_rare_labels_then_unlabelled_records(real):
    db, statements = real
    labels = aggregate_labels(db["scp_codes"], statements, "form")
    kept, classes, _ = task_labels(db["scp_codes"], statements, "form", min_samples=50)
    counts = pd.Series([c for cs in labels for c in cs]).value_counts()
    assert classes == sorted(counts[counts > 50].index)
    assert all(set(cs) <= set(classes) and cs for cs in kept)


def test_min_samples_is_ignored_for_diagnostic_with_a_warning(real, caplog):
    db, statements = real
    _, classes, _ = task_labels(db["scp_codes"], statements, "diagnostic", min_samples=50)
    assert len(classes) == 44 and "data.min_samples=50 is ignored for label_set=diagnostic" in caplog.text
    _, filtered, _ = select_labels(aggregate_labels(db["scp_codes"], statements, "diagnostic"), 50)
    assert len(filtered) < 44  # what applying it would have done


def test_recommended_folds_are_patient_disjoint(real):
    db, _ = real
    assert db["strat_fold"].value_counts().sort_index().tolist() == [306, 293, 327, 304, 296, 309, 305, 292, 292, 304]
    assert db["patient_id"].nunique() == 2725
    assert (db.groupby("patient_id")["strat_fold"].nunique() == 1).all()
    train = set(db[db.strat_fold <= 8].patient_id)
    assert not train & set(db[db.strat_fold == 9].patient_id) and not train & set(db[db.strat_fold == 10].patient_id)


def test_unknown_label_set_and_missing_files_are_clear(real, tmp_path):
    db, statements = real
    with pytest.raises(BioexpError, match="unknown data.label_set 'bogus'; choose one of " + ", ".join(LABEL_SETS)):
        aggregate_labels(db["scp_codes"], statements, "bogus")
    with pytest.raises(DataNotFoundError, match="aws s3 sync --no-sign-request s3://physionet-open/ptb-xl/1.0.3/"):
        load_database(tmp_path)
