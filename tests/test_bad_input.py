"""Bad input through the public API: each error names the file and gives the fix, and each skip is listed with its reason."""
import builtins
import io
import logging
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from mgmt_nb.core import MGMTDataError
from mgmt_nb.data import read_volume
from mgmt_nb.dataloader import cohort_table, prepare_volumes, read_labels, skipped_patients
from mgmt_nb.eda import quality_report

from dicom_fixtures import other_orientation

SIZE = (16, 16, 8)  # preprocessing output shape, small because only the skips matter here


@pytest.fixture()
def cohort(tmp_path, phantom_pair):
    "A private copy of the phantom training cohort that a test may damage."
    target = tmp_path / "cohort"
    shutil.copytree(phantom_pair[0], target)
    return target


def first_patient(cohort):
    return sorted((cohort / "train").iterdir())[0]


@pytest.fixture()
def series(tmp_path, phantom_pair):
    "A private copy of one phantom FLAIR series (a folder of single-frame DICOM files) that a test may damage."
    source = sorted((phantom_pair[0] / "train").iterdir())[0] / "FLAIR"
    target = tmp_path / "FLAIR"
    shutil.copytree(source, target)
    return target


def slice_file(folder: Path, number: int) -> Path:
    "Return Image-{number}.dcm; its name ends in '.dcm', so it is no substring of another slice's name."
    path = folder / f"Image-{number}.dcm"
    assert path.is_file(), path
    return path


def edit_dicom(path: Path, edit, target: Path | None = None) -> Path:
    "Read a DICOM file, apply `edit` to the dataset and save it to `target` (default: in place)."
    dataset = pydicom.dcmread(path)
    edit(dataset)
    target = target or path
    dataset.save_as(target)
    return target


def new_instance(dataset) -> None:
    "Give a copied slice its own SOPInstanceUID, as a scanner would."
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID


def assert_names_fix(caught, name) -> None:
    "The error message names the offending file or folder, and the error carries a fix."
    assert str(name) in str(caught.value)
    assert caught.value.fix


def assert_same_volume(volume, expected) -> None:
    assert volume.shape == expected.shape
    assert np.array_equal(volume.data, expected.data)
    assert np.allclose(volume.spacing, expected.spacing)


def warning_messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("mgmt_nb") and record.levelno == logging.WARNING]


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


def read_with_cut_slice(cohort, size: int):
    "Cut the first FLAIR slice of the first patient to `size` bytes and return (that file, the MGMTDataError of reading the series)."
    folder = first_patient(cohort) / "FLAIR"
    victim = sorted(folder.iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:size])
    with pytest.raises(MGMTDataError) as caught:
        read_volume(folder)
    return victim, caught.value


def test_truncated_dicom_file(cohort):
    victim, error = read_with_cut_slice(cohort, 300)
    assert victim.name in str(error)


def test_dicom_file_cut_inside_preamble(cohort):
    victim, error = read_with_cut_slice(cohort, 100)
    assert victim.name in str(error)
    assert "100 bytes, shorter than the 128-byte preamble" in str(error)
    assert "download the series again" in error.fix


def test_bad_series_is_a_listed_skip(cohort):
    folder = first_patient(cohort) / "FLAIR"
    (folder / "stray.bin").write_bytes(b"\x00" * 64)
    table = cohort_table(cohort, sequences=["FLAIR"])
    ready, skipped = prepare_volumes(table, "FLAIR", (16, 16, 8), progress=False)
    assert len(ready) == len(table) - 1
    assert skipped.patient_id.tolist() == [folder.parent.name]
    assert "stray.bin" in skipped.reason.iloc[0]
    report = quality_report(table, ["FLAIR"], progress=False)
    assert report.skipped.patient_id.tolist() == [folder.parent.name]
    assert "stray.bin" in report.skipped.reason.iloc[0]


# --- one damaged file or attribute in a DICOM series: read_volume raises naming it --------------
# Each function damages the series folder and returns the path the error message must name.


def zero_byte_slice(folder):
    victim = slice_file(folder, 12)
    victim.write_bytes(b"")
    return victim


def slice_without_pixel_data(folder):
    return edit_dicom(slice_file(folder, 12), lambda dataset: delattr(dataset, "PixelData"))


def ct_slice(folder):
    def make_ct(dataset):
        dataset.Modality = "CT"

    return edit_dicom(slice_file(folder, 12), make_ct)


def pixel_data_shorter_than_rows_by_columns(folder):
    def halve_pixel_data(dataset):
        dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 2]

    return edit_dicom(slice_file(folder, 12), halve_pixel_data)


def slice_without_orientation(folder):
    return edit_dicom(slice_file(folder, 12), lambda dataset: delattr(dataset, "ImageOrientationPatient"))


def non_orthogonal_orientation(folder):
    "Every slice gets row and column cosines 53 degrees apart, so the folder is what the message names."

    def skew(dataset):
        dataset.ImageOrientationPatient = [1, 0, 0, 0.6, 0.8, 0]

    for path in sorted(folder.iterdir()):
        edit_dicom(path, skew)
    return folder


def same_position_different_pixels(folder):
    def invert(dataset):
        new_instance(dataset)
        dataset.PixelData = (65535 - dataset.pixel_array).astype("<u2").tobytes()

    edit_dicom(slice_file(folder, 12), invert, folder / "Image-repeat.dcm")
    return folder


def dangling_symlink_slice(folder):
    "A slice replaced by a link to a file that no longer exists, which fails for root too."
    victim = slice_file(folder, 12)
    victim.unlink()
    victim.symlink_to(folder / "deleted-on-the-server.dcm")
    return victim


@pytest.mark.parametrize(
    "damage",
    [
        zero_byte_slice,
        slice_without_pixel_data,
        ct_slice,
        pixel_data_shorter_than_rows_by_columns,
        slice_without_orientation,
        non_orthogonal_orientation,
        same_position_different_pixels,
        dangling_symlink_slice,
    ],
)
def test_damaged_dicom_series(series, damage):
    offender = damage(series)
    with pytest.raises(MGMTDataError) as caught:
        read_volume(series)
    assert_names_fix(caught, offender)


def test_unreadable_dicom_slice(series, monkeypatch):
    # Tests run as root, where chmod 000 does not stop reads, so open() is patched to raise the
    # PermissionError that a user without read permission gets for this one slice.
    victim = slice_file(series, 12)
    real_open = builtins.open

    def open_unless_victim(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == victim:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_unless_victim)
    monkeypatch.setattr(io, "open", open_unless_victim)
    with pytest.raises(MGMTDataError) as caught:
        read_volume(series)
    assert_names_fix(caught, victim)


# --- malformed NIfTI files -----------------------------------------------------------------------


def save_nifti(path: Path, data) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([2.0, 2.0, 3.0, 1.0])), path)
    return path


def volume_with(value):
    data = np.random.default_rng(0).uniform(0, 100, (12, 12, 8)).astype(np.float32)
    data[5, 5, 4] = value
    return data


def nifti_with_nan(folder):
    return save_nifti(folder / "nan.nii.gz", volume_with(np.nan))


def nifti_with_infinity(folder):
    return save_nifti(folder / "infinite.nii.gz", volume_with(np.inf))


def nifti_2d(folder):
    return save_nifti(folder / "slice2d.nii.gz", np.ones((12, 12)))


def nifti_5d(folder):
    return save_nifti(folder / "five_d.nii.gz", np.ones((6, 6, 4, 2, 2)))


def truncated_nifti(folder):
    path = save_nifti(folder / "truncated.nii.gz", volume_with(1.0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def text_named_nifti(folder):
    path = folder / "notes.nii.gz"
    path.write_text("patient folder exported as text, not a NIfTI image\n")
    return path


def zero_byte_nifti(folder):
    path = folder / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def dangling_symlink_nifti(folder):
    "A link to a file that no longer exists, which fails for root too."
    path = folder / "moved.nii.gz"
    path.symlink_to(folder / "elsewhere" / "moved.nii.gz")
    return path


@pytest.mark.parametrize(
    "make_file",
    [
        nifti_with_nan,
        nifti_with_infinity,
        nifti_2d,
        nifti_5d,
        truncated_nifti,
        text_named_nifti,
        zero_byte_nifti,
        dangling_symlink_nifti,
    ],
)
def test_bad_nifti_file(tmp_path, make_file):
    path = make_file(tmp_path)
    with pytest.raises(MGMTDataError) as caught:
        read_volume(path)
    assert_names_fix(caught, path.name)


# --- labels CSV ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "text, expected",
    [
        ("BraTS21ID,MGMT_value\n00001,1\n,0\n00003,1\n", "empty patient id on line(s) [3]"),
        ("BraTS21ID,MGMT_value\n00001,1\n   ,0\n", "empty patient id on line(s) [3]"),
        ("BraTS21ID,MGMT_value\n00001,1\n00002,0.5\n", "must be 0 or 1"),
    ],
    ids=["blank-id", "whitespace-id", "fractional-label"],
)
def test_labels_csv_error_names_fix(tmp_path, text, expected):
    path = tmp_path / "train_labels.csv"
    path.write_text(text)
    with pytest.raises(MGMTDataError) as caught:
        read_labels(path)
    assert expected in str(caught.value)
    assert_names_fix(caught, path)


def test_missing_labels_file(tmp_path):
    path = tmp_path / "train_labels.csv"
    with pytest.raises(MGMTDataError, match="not found") as caught:
        read_labels(path)
    assert_names_fix(caught, path)


# --- cohort problems that skip a patient: listed by cohort_table or prepare_volumes, and by the quality report


def assert_listed_skip(cohort, caplog, patient_id, expected, sequence="FLAIR", **table_options):
    "prepare_volumes skips the patient with a logged warning, and both its skipped table and the quality report give the reason."
    table = cohort_table(cohort, sequences=[sequence], **table_options)
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        ready, skipped = prepare_volumes(table, sequence, SIZE, progress=False)
    assert patient_id not in ready.patient_id.tolist()
    assert skipped.patient_id.tolist() == [patient_id]
    assert expected in skipped.reason.iloc[0]
    assert any(patient_id in message and expected in message for message in warning_messages(caplog))

    report = quality_report(table, [sequence], progress=False)
    reasons = report.skipped.set_index("patient_id")["reason"]
    assert expected in reasons[patient_id]


def test_blank_volume_is_rejected(cohort, caplog):
    folder = first_patient(cohort) / "T1wCE"
    for path in folder.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.PixelData = np.zeros_like(dataset.pixel_array).tobytes()
        dataset.save_as(path)
    table = cohort_table(cohort, sequences=["T1wCE"])
    _, skipped = prepare_volumes(table, "T1wCE", (16, 16, 8), progress=False)
    assert skipped.patient_id.tolist() == [folder.parent.name]
    assert "blank" in skipped.reason.iloc[0]
    assert_listed_skip(cohort, caplog, folder.parent.name, "blank", sequence="T1wCE")


def test_empty_patient_folder_skipped(cohort, caplog):
    patient = first_patient(cohort)
    for folder in patient.iterdir():
        shutil.rmtree(folder)
    assert_listed_skip(cohort, caplog, patient.name, str(patient / "FLAIR"))


def test_labelled_id_without_folder_skipped(cohort, caplog):
    labels = cohort / "train_labels.csv"
    labels.write_text(labels.read_text() + "99998,1\n")
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        table = cohort_table(cohort, sequences=["FLAIR"])
        ready, skipped = prepare_volumes(table, "FLAIR", SIZE, progress=False)
    # cohort_table skips the patient when it checks for the folder, else prepare_volumes skips the missing series.
    listed = pd.concat([skipped_patients(table), skipped], ignore_index=True)
    assert "99998" not in ready.patient_id.tolist()
    assert listed.patient_id.tolist() == ["99998"]
    assert str(cohort / "train") in listed.reason.iloc[0]
    assert any("99998" in message for message in warning_messages(caplog))

    report = quality_report(table, ["FLAIR"], progress=False)
    reasons = report.skipped.set_index("patient_id")["reason"]
    assert reasons["99998"] == listed.reason.iloc[0]


def test_empty_sequence_folder_skipped(cohort, caplog):
    folder = first_patient(cohort) / "FLAIR"
    for path in folder.iterdir():
        path.unlink()
    assert_listed_skip(cohort, caplog, folder.parent.name, "empty series")


def assert_cohort_skip_in_report(table, caplog, patient_id, reason):
    "cohort_table logged the skipped patient, and the quality report lists it for all sequences with the reason."
    assert patient_id not in table.patient_id.tolist()
    assert any(patient_id in message and reason in message for message in warning_messages(caplog))
    report = quality_report(table, ["FLAIR"], max_patients=2, progress=False)
    skipped = report.skipped.set_index("patient_id")
    assert skipped.loc[patient_id, "sequence"] == "all"
    assert reason in skipped.loc[patient_id, "reason"]
    assert report.summary["cohort"].loc["patients skipped by cohort_table", "count"] == 1


def test_unlabelled_patient_folder_in_report(cohort, caplog):
    shutil.copytree(first_patient(cohort), cohort / "train" / "99999")
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        table = cohort_table(cohort, sequences=["FLAIR"])
    assert_cohort_skip_in_report(table, caplog, "99999", "no label")


def test_excluded_patient_in_report(cohort, caplog):
    patient_id = first_patient(cohort).name
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        table = cohort_table(cohort, sequences=["FLAIR"], exclude={patient_id: "excluded by the host for data problems"})
    assert_cohort_skip_in_report(table, caplog, patient_id, "excluded by the host")


# --- problems the reader works around: a logged warning, and the right slices kept ---------------


def read_with_warnings(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        volume = read_volume(folder)
    return volume, warning_messages(caplog)


def test_localizer_dropped_with_warning(series, caplog):
    expected = read_volume(series)

    def make_localizer(dataset):
        new_instance(dataset)
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        dataset.ImageOrientationPatient = other_orientation(dataset)
        dataset.Rows, dataset.Columns = 32, 24
        dataset.PixelData = np.full((32, 24), 500, dtype="<u2").tobytes()

    localizer = edit_dicom(slice_file(series, 3), make_localizer, series / "Image-scout.dcm")
    volume, messages = read_with_warnings(series, caplog)
    assert_same_volume(volume, expected)
    assert any(localizer.name in message and "localizer" in message for message in messages)
    assert any(localizer.name in warning for warning in volume.warnings)


def test_duplicate_slice_dropped_with_warning(series, caplog):
    expected = read_volume(series)
    shutil.copyfile(slice_file(series, 12), series / "Image-12-copy.dcm")
    volume, messages = read_with_warnings(series, caplog)
    assert_same_volume(volume, expected)
    assert any("duplicate" in message and "Image-12" in message for message in messages)


def test_minority_orientation_slice_dropped(series, caplog):
    expected = read_volume(series)

    def reorient(dataset):
        new_instance(dataset)
        dataset.ImageOrientationPatient = other_orientation(dataset)

    stray = edit_dicom(slice_file(series, 12), reorient, series / "Image-other-plane.dcm")
    volume, messages = read_with_warnings(series, caplog)
    assert_same_volume(volume, expected)
    assert any(stray.name in message and "ImageOrientationPatient" in message for message in messages)


def test_missing_positions_use_instance_order(series, caplog):
    expected = read_volume(series)
    for path in sorted(series.iterdir()):
        edit_dicom(path, lambda dataset: delattr(dataset, "ImagePositionPatient"))
    volume, messages = read_with_warnings(series, caplog)
    assert_same_volume(volume, expected)
    assert any("ImagePositionPatient" in message and "InstanceNumber" in message for message in messages)


def quality_report_row(folder: Path) -> dict:
    "Describe one series through the quality report of a one-row cohort table."
    table = pd.DataFrame({"patient_id": ["00000"], "MGMT_value": [1], "FLAIR": [str(folder)]})
    return quality_report(table, ["FLAIR"], progress=False).series.iloc[0].to_dict()


def test_missing_middle_slice_warns(series, caplog):
    slice_file(series, 12).unlink()
    volume, messages = read_with_warnings(series, caplog)
    assert any("uneven slice spacing" in message and str(series) in message for message in messages)
    assert volume.warnings
    report_row = quality_report_row(series)
    assert report_row["n_warnings"] >= 1
    assert "uneven slice spacing" in report_row["warnings"]
