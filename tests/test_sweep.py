"""The sweep command and the k-fold and label-permutation modes of the training notebook, run through papermill.

A tiny sweep with a failing run, its resume and its report run as tests in nbs/09_sweep.ipynb.
"""
import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import run_training
from mgmt_nb.sweep import plan_sweep

# Tiny runs on the phantom_pair cohort: the seed and patient counts match conftest's phantom_pair, so
# every run reads the cohort that the fixture generated.
TINY = dict(image_size=16, depth=16, batch_size=4, epochs=1, phantom_train=16, phantom_external=8)
SEED = 5


def read_labels(path, id_column):
    "Read a labels CSV with patient ids as strings, indexed by patient id."
    return pd.read_csv(path, dtype={id_column: str}).set_index(id_column)["MGMT_value"]


def test_plan_lists_every_run():
    plan = plan_sweep(["resnet18", "resnet34"], ["FLAIR", "T1w", "T1wCE", "T2w"], permutation=True, seeds=(1, 2), epochs=10)
    assert len(plan) == 2 * 2 * 5 * 2
    names = [spec["run_name"] for spec in plan]
    assert len(set(names)) == len(names)
    assert names[0] == "resnet18-FLAIR-seed1"
    assert "resnet34-all-seed2" in names
    assert "resnet34-all-seed2-permuted" in names
    controls = [spec for spec in plan if spec["permute_labels"]]
    assert all(spec["run_name"].endswith("-permuted") for spec in controls)
    assert len(controls) == 20
    assert all(spec["params"]["epochs"] == 10 for spec in plan)
    assert {spec["params"]["seq"] for spec in plan} == {"FLAIR", "T1w", "T1wCE", "T2w", "all"}


def test_plan_is_deterministic():
    first = plan_sweep(["densenet121"], ["T2w"], image_size=64)
    second = plan_sweep(["densenet121"], ["T2w"], image_size=64)
    assert first == second
    assert [spec["run_name"] for spec in first] == ["densenet121-T2w-seed42", "densenet121-all-seed42"]


def test_plan_rejects_fixed_parameters():
    with pytest.raises(ValueError, match="through archs=, seqs=, seeds="):
        plan_sweep(["resnet18"], ["FLAIR"], arch="resnet34")


def test_sweep_module_runs_as_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mgmt_nb.sweep", "--archs", "resnet18", "--seqs", "FLAIR", "T2w", "--all", "--permutation",
         "--output", str(tmp_path), "-p", "epochs", "10", "--dry-run"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:6] == ["resnet18-FLAIR-seed42", "resnet18-T2w-seed42", "resnet18-all-seed42",
                         "resnet18-FLAIR-seed42-permuted", "resnet18-T2w-seed42-permuted", "resnet18-all-seed42-permuted"]
    assert "-p epochs 10" in lines[-1]


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory, cache_root, phantom_pair):
    "A 2-fold label-permutation control run of the training notebook; test_kfold_run_resumes_unfinished_fold runs it again."
    output_dir = tmp_path_factory.mktemp("kfold")
    result = run_training(output_dir, "kfold", cache_root, validation="kfold", folds=2, permute_labels=True, seed=SEED, **TINY)
    assert result.returncode == 0, result.stderr[-4000:]
    return output_dir / "kfold"


def test_kfold_run_predicts_every_patient_once(kfold_run, phantom_pair):
    run_dir = kfold_run
    oof = pd.read_csv(run_dir / "predictions_oof.csv", dtype={"patient_id": str})
    labels = read_labels(phantom_pair[0] / "train_labels.csv", "BraTS21ID")
    skipped = pd.read_csv(run_dir / "skipped.csv", dtype={"patient_id": str})
    training_skipped = set(skipped.patient_id[skipped.cohort == "training"])

    assert not oof.patient_id.duplicated().any()
    assert sorted(oof.patient_id) == sorted(set(labels.index) - training_skipped)
    assert sorted(oof.fold.unique()) == [0, 1]
    validation = pd.read_csv(run_dir / "predictions_validation.csv", dtype={"patient_id": str})
    pd.testing.assert_frame_equal(validation, oof)

    external = pd.read_csv(run_dir / "predictions_external.csv")
    assert {"probability_fold_0", "probability_fold_1"} <= set(external.columns)
    mean = external[["probability_fold_0", "probability_fold_1"]].mean(axis=1)
    assert (external.probability - mean).abs().max() < 1e-6
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["cohorts"]["validation"]["n"] == len(oof)
    params = json.loads((run_dir / "params.json").read_text())
    assert (params["validation"], params["folds"]) == ("kfold", 2)
    for fold in (0, 1):
        for name in ("best.weights.h5", "history.csv", "predictions_validation.csv", "predictions_external.csv"):
            assert (run_dir / f"fold_{fold}" / name).is_file(), (fold, name)


def test_permutation_run_records_flag(kfold_run, phantom_pair):
    run_dir = kfold_run
    params = json.loads((run_dir / "params.json").read_text())
    assert params["permute_labels"] is True

    oof = pd.read_csv(run_dir / "predictions_oof.csv", dtype={"patient_id": str}).set_index("patient_id")
    truth = read_labels(phantom_pair[0] / "train_labels.csv", "BraTS21ID").loc[oof.index]
    assert (oof.MGMT_value != truth).any(), "training-cohort labels are shuffled"
    assert oof.MGMT_value.sum() == truth.sum(), "shuffling keeps the number of methylated patients"
    external = pd.read_csv(run_dir / "predictions_external.csv", dtype={"patient_id": str}).set_index("patient_id")
    external_truth = read_labels(phantom_pair[1] / "labels.csv", "patient_id").loc[external.index]
    assert (external.MGMT_value == external_truth).all(), "external labels stay true"
    assert "PERMUTATION CONTROL" in (run_dir.parent / "kfold.ipynb").read_text()


def test_kfold_run_resumes_unfinished_fold(kfold_run, cache_root):
    run_dir = kfold_run
    kept = run_dir / "fold_0" / "best.weights.h5"
    kept_time = kept.stat().st_mtime_ns
    (run_dir / "fold_1" / "predictions_validation.csv").unlink()  # fold 1 now looks unfinished
    (run_dir / "metrics.json").unlink()

    second = run_training(run_dir.parent, "kfold", cache_root, validation="kfold", folds=2, permute_labels=True, seed=SEED, **TINY)
    assert second.returncode == 0, second.stderr[-4000:]
    assert kept.stat().st_mtime_ns == kept_time
    assert (run_dir / "fold_1" / "predictions_validation.csv").is_file()
    assert (run_dir / "metrics.json").is_file()
    executed = (run_dir.parent / "kfold.ipynb").read_text()
    assert "fold_0: finished earlier, reading its predictions" in executed
    assert "fold_1: finished earlier" not in executed
