"""Bad input through the public API: each error names the file and gives the fix."""
import shutil

import numpy as np
import pydicom
import pytest

from mgmt_nb.core import MGMTDataError
from mgmt_nb.data import read_volume
from mgmt_nb.dataloader import cohort_table, prepare_volumes, read_labels


@pytest.fixture()
def cohort(tmp_path, phantom_pair):
    "A private copy of the phantom training cohort that a test may damage."
    target = tmp_path / "cohort"
    shutil.copytree(phantom_pair[0], target)
    return target


def first_patient(cohort):
    return sorted((cohort / "train").iterdir())[0]


def test_missing_sequence_folder(cohort):
    folder = first_patient(cohort) / "T2w"
    shutil.rmtree(folder)
    with pytest.raises(MGMTDataError) as caught:
        read_volume(folder)
    assert str(folder) in str(caught.value)
    assert caught.value.fix


def test_empty_series(cohort):
    folder = first_patient(cohort) / "T1w"
    for path in folder.iterdir():
        path.unlink()
    with pytest.raises(MGMTDataError, match="empty") as caught:
        read_volume(folder)
    assert str(folder) in str(caught.value)


def test_non_dicom_file_in_series(cohort):
    folder = first_patient(cohort) / "FLAIR"
    stray = folder / "notes.txt"
    stray.write_text("scanner notes, not an image")
    with pytest.raises(MGMTDataError) as caught:
        read_volume(folder)
    assert "notes.txt" in str(caught.value)
    assert caught.value.fix


def test_truncated_dicom_file(cohort):
    folder = first_patient(cohort) / "FLAIR"
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(MGMTDataError) as caught:
        read_volume(folder)
    assert victim.name in str(caught.value)


def test_bad_series_is_a_listed_skip(cohort):
    folder = first_patient(cohort) / "FLAIR"
    (folder / "stray.bin").write_bytes(b"\x00" * 64)
    table = cohort_table(cohort, sequences=["FLAIR"])
    ready, skipped = prepare_volumes(table, "FLAIR", (16, 16, 8), progress=False)
    assert len(ready) == len(table) - 1
    assert skipped.patient_id.tolist() == [folder.parent.name]
    assert "stray.bin" in skipped.reason.iloc[0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("BraTS21ID,MGMT_value\n00001,1\n00002,\n", "missing MGMT_value"),
        ("BraTS21ID,MGMT_value\n00001,1\n00002,yes\n", "must be 0 or 1"),
        ("BraTS21ID,MGMT_value\n00001,1\n00002,3\n", "must be 0 or 1"),
        ("BraTS21ID,MGMT_value\n00001,1\n00001,0\n", "duplicated"),
        ("BraTS21ID\n00001\n", "missing column"),
        ("", "cannot be parsed"),
    ],
)
def test_bad_labels_csv(tmp_path, text, expected):
    path = tmp_path / "train_labels.csv"
    path.write_text(text)
    with pytest.raises(MGMTDataError, match=expected) as caught:
        read_labels(path)
    assert str(path) in str(caught.value)


def test_blank_volume_is_rejected(cohort):
    folder = first_patient(cohort) / "T1wCE"
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.PixelData = np.zeros_like(dataset.pixel_array).tobytes()
        dataset.save_as(path)
    table = cohort_table(cohort, sequences=["T1wCE"])
    _, skipped = prepare_volumes(table, "T1wCE", (16, 16, 8), progress=False)
    assert skipped.patient_id.tolist() == [folder.parent.name]
    assert "blank" in skipped.reason.iloc[0]
