"""The training notebook run as users run it: papermill on the phantom cohort, then the files it writes."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, run_training
from mgmt_nb.core import SYNTHETIC_NOTE
from mgmt_nb.dataloader import cached_warnings
from mgmt_nb.phantom import (
    SENTINEL_ACCESSION_PREFIX, SENTINEL_BIRTH_DATE, SENTINEL_ID_PREFIX, SENTINEL_INSTITUTION, SENTINEL_NAME_PREFIX,
)

# The same call as the installed `mgmt_nb_summary` console script, which exits with summary_cli's return value.
SUMMARY_SCRIPT = "import sys; from mgmt_nb.evaluate import summary_cli; sys.exit(summary_cli())"
RUN_FILES = [
    "params.json", "history.csv", "best.weights.h5", "loss_curves.png", "predictions_validation.csv",
    "predictions_external.csv", "skipped.csv", "metrics.json",
]


def test_run_writes_every_file(phantom_run):
    missing = [name for name in RUN_FILES if not (phantom_run / name).is_file()]
    assert missing == []


def test_metrics_are_labelled_synthetic(phantom_run):
    metrics = json.loads((phantom_run / "metrics.json").read_text())
    assert metrics["synthetic"] is True
    assert metrics["note"] == SYNTHETIC_NOTE
    external = metrics["cohorts"]["external"]
    assert external["n"] == 8
    assert 0.0 <= external["auc_low"] <= external["auc"] <= external["auc_high"] <= 1.0
    assert metrics["auc_interval"] == "95% stratified percentile bootstrap, 2000 resamples, seed 0"


def notebook_stream(path: Path, stream: str) -> str:
    "Return the text an executed notebook wrote to `stream` (stdout or stderr), all cells joined."
    notebook = json.loads(path.read_text())
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if output.get("name") == stream:
                texts.append("".join(output.get("text", "")))
    return "".join(texts)


def test_printed_interval_and_cohort_warning(phantom_run):
    printed = notebook_stream(phantom_run.parent / "phantom.ipynb", "stdout")
    assert "AUC [low, high]: 95% stratified percentile bootstrap, 2000 resamples, seed 0 confidence interval" in printed
    assert "(patients not flagged by the leakage audit; the audit flagged 0 of 8)" in printed
    assert "external (synthetic phantom): AUC" in printed
    assert "WARNING: the external cohort has 8 patients" in printed


def test_predictions_cover_external_patients(phantom_run, phantom_pair):
    predictions = pd.read_csv(phantom_run / "predictions_external.csv", dtype={"patient_id": str})
    labels = pd.read_csv(phantom_pair[1] / "labels.csv", dtype={"patient_id": str})
    assert sorted(predictions.patient_id) == sorted(labels.patient_id)
    assert predictions.probability.between(0, 1).all()
    assert predictions.synthetic.all()  # a predictions file read alone still marks its data as synthetic
    merged = predictions.merge(labels, on="patient_id", suffixes=("", "_truth"))
    assert (merged.MGMT_value == merged.MGMT_value_truth).all()


def test_history_has_one_row_per_epoch(phantom_run):
    history = pd.read_csv(phantom_run / "history.csv")
    assert {"loss", "val_loss", "auc", "val_auc", "accuracy"} <= set(history.columns)
    assert 1 <= len(history) <= 2


def test_every_csv_marks_synthetic(phantom_run):
    tables = sorted(phantom_run.rglob("*.csv"))
    names = {path.name for path in tables}
    assert {"history.csv", "skipped.csv", "predictions_external.csv", "candidates.csv", "flagged_patients.csv"} <= names
    for path in tables:
        table = pd.read_csv(path)
        assert "synthetic" in table.columns, f"{path} has no synthetic column"
        assert table["synthetic"].eq(True).all(), f"{path} marks a phantom row as real"


def test_no_header_identifier_reaches_outputs(phantom_run, cache_root):
    sentinels = [SENTINEL_NAME_PREFIX, SENTINEL_ID_PREFIX, SENTINEL_BIRTH_DATE, SENTINEL_ACCESSION_PREFIX, SENTINEL_INSTITUTION]
    leaks = []
    scanned = 0
    cohort = phantom_run.parent / "cohort"  # the DICOM input, which carries the sentinels by design
    for folder in (phantom_run.parent, cache_root / "volumes"):
        for path in folder.rglob("*"):
            if not path.is_file() or cohort in path.parents:
                continue
            scanned += 1
            content = path.read_bytes()
            if path.suffix == ".zip":  # a volume cache file: its text is the reader warnings
                content += "\n".join(cached_warnings(path)).encode()
            for sentinel in sentinels:
                if sentinel.encode() in content or sentinel in path.name:
                    leaks.append((str(path), sentinel))
    assert scanned > 10
    assert leaks == []


def test_summary_cli_prints_external_auc(phantom_run):
    result = subprocess.run([sys.executable, "-c", SUMMARY_SCRIPT, str(phantom_run)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "external" in result.stdout
    assert "AUC" in result.stdout
    assert "SYNTHETIC" in result.stdout


def test_summary_cli_missing_folder(tmp_path):
    result = subprocess.run([sys.executable, "-c", SUMMARY_SCRIPT, str(tmp_path / "absent")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert str(tmp_path / "absent") in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_missing_series_is_skipped_and_listed(phantom_run):
    missing = Path(json.loads((phantom_run.parent / "fixture.json").read_text())["missing_series"])
    skipped = pd.read_csv(phantom_run / "skipped.csv", dtype={"patient_id": str})
    row = skipped[skipped.patient_id == missing.parent.name]
    assert len(row) == 1
    assert str(missing) in row.reason.iloc[0]
    assert "series not found" in row.reason.iloc[0]
    assert "Errno" not in row.reason.iloc[0]
    validation = pd.read_csv(phantom_run / "predictions_validation.csv", dtype={"patient_id": str})
    assert missing.parent.name not in set(validation.patient_id)
    logged = notebook_stream(phantom_run.parent / "phantom.ipynb", "stderr")
    assert logged.count(f"skipped patient {missing.parent.name}") == 1, "the leakage audit logged the skip a second time"


def test_bad_parameter_fails_with_clear_message(tmp_path, cache_root, phantom_pair):
    result = run_training(tmp_path, "bad", cache_root, arch="resnet9000", epochs=1)
    assert result.returncode != 0
    assert "resnet9000" in result.stderr
    assert "resnet18" in result.stderr
    assert not (tmp_path / "bad").exists(), "no run folder is created for invalid parameters"


def test_too_small_volume_fails_before_data(tmp_path, cache_root, phantom_pair):
    result = run_training(tmp_path, "small", cache_root, image_size=8, depth=8, epochs=1)
    assert result.returncode != 0
    assert "image_size=8, depth=8: resnet18 needs at least 16 voxels along every axis" in result.stderr
    assert not (tmp_path / "small").exists(), "no run folder is created for invalid parameters"


def test_run_outside_repository(phantom_run):
    cwd = Path(json.loads((phantom_run.parent / "fixture.json").read_text())["cwd"])
    assert REPO not in cwd.parents
    assert (phantom_run / "metrics.json").is_file()


def test_papermill_notebooks_do_not_export():
    # An nbdev_export() cell would rewrite mgmt_nb/ on every papermill run, and fail outside the repository.
    for name in ("05_train.ipynb", "07_evaluate.ipynb"):
        notebook = json.loads((REPO / "nbs" / name).read_text())
        sources = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
        assert not any("nbdev_export" in source for source in sources), name


def test_xception_all_sequences_mixed_xla(tmp_path, cache_root, phantom_pair):
    # One run covers the depthwise-separable backbone, four channels, bfloat16, XLA and the mirrored strategy.
    result = run_training(
        tmp_path, "all", cache_root, arch="xception", seq="all", epochs=1,
        mixed_precision="mixed_bfloat16", jit_compile=True, distribute="mirrored",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    params = json.loads((tmp_path / "all" / "params.json").read_text())
    assert params["arch"] == "xception"
    assert params["sequences"] == ["FLAIR", "T1w", "T1wCE", "T2w"]
    assert params["mixed_precision"] == "mixed_bfloat16"
    predictions = pd.read_csv(tmp_path / "all" / "predictions_external.csv")
    assert len(predictions) == 8
    assert predictions.probability.between(0, 1).all()
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert metrics["cohorts"]["external"]["n"] == 8


def test_resume_with_truncated_backup(tmp_path, cache_root, phantom_pair):
    "A run stopped while Keras wrote its first backup trains again from epoch 0 instead of failing on every resume."
    run_dir = tmp_path / "truncated"
    backup = run_dir / "backup"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)  # the HDF5 signature, then nothing valid
    (backup / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    result = run_training(tmp_path, "truncated", cache_root, epochs=1, leakage_audit=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()
    assert len(list(run_dir.glob("backup.unreadable-*"))) == 1
    logged = notebook_stream(tmp_path / "truncated.ipynb", "stderr")
    assert "latest.weights.h5 could not be read" in logged
    assert "starts again from epoch 0" in logged
    assert len(pd.read_csv(run_dir / "history.csv")) == 1


@pytest.mark.parametrize("parameter, value, message", [
    ("augment_ops", "flip,blur", "names no known augmentation ['blur']"),
    ("monitor", "accuracy", "monitor='accuracy' is not supported"),
])
def test_unknown_choice_fails_early(tmp_path, cache_root, phantom_pair, parameter, value, message):
    result = run_training(tmp_path, "invalid", cache_root, epochs=1, **{parameter: value})
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "invalid").exists(), "no run folder is created for invalid parameters"


def test_monitor_val_auc_run(tmp_path, cache_root, phantom_pair):
    "A run with monitor val_auc records the choice and reports the epoch of the highest validation AUC as its checkpoint."
    result = run_training(tmp_path, "by_auc", cache_root, monitor="val_auc", epochs=3, leakage_audit=False)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "by_auc"
    assert json.loads((run_dir / "params.json").read_text())["monitor"] == "val_auc"
    history = pd.read_csv(run_dir / "history.csv")
    best = history.loc[history["val_auc"].idxmax()]
    printed = notebook_stream(tmp_path / "by_auc.ipynb", "stdout")
    record = json.loads((run_dir / "checkpoint.json").read_text())
    assert record == {"epoch": int(best["epoch"]), "monitor": "val_auc", "value": pytest.approx(best["val_auc"])}
    expected = f"checkpoint: epoch {int(best['epoch']) + 1} (epoch {int(best['epoch'])} in history.csv, which logs {len(history)} epochs)"
    assert f"{expected}, the highest val_auc ({best['val_auc']:.3f})" in printed


def test_finished_run_not_trained_again(tmp_path, cache_root, phantom_pair):
    "Started again with the same run_name and parameters, a finished run evaluates its checkpoint instead of training a second time."
    first = run_training(tmp_path, "twice", cache_root, epochs=2, leakage_audit=False)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "twice"
    checkpoint = (run_dir / "best.weights.h5").read_bytes()
    second = run_training(tmp_path, "twice", cache_root, epochs=2, leakage_audit=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]
    assert (run_dir / "best.weights.h5").read_bytes() == checkpoint
    printed = notebook_stream(tmp_path / "twice.ipynb", "stdout")
    assert "the fit finished before (2 epochs logged, no backup)" in printed
    assert "Epoch 1/2" not in printed
