"""PTB-XL label aggregation and folds on the real metadata (3,028 real rows, the real statement table)."""

from __future__ import annotations

import pandas as pd
import pytest

from bioexp.data.ptbxl import LABEL_SETS, aggregate_labels, load_database, load_statements, select_labels
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


def test_min_samples_drops_rare_labels_then_unlabelled_records(real):
    db, statements = real
    labels = aggregate_labels(db["scp_codes"], statements, "diagnostic")
    _, classes, _ = select_labels(labels, min_samples=50)
    counts = pd.Series([c for cs in labels for c in cs]).value_counts()
    assert classes == sorted(counts[counts > 50].index)


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
