"""Patient identifiers in DICOM headers never reach logs, error messages, cache files or the quality report.

The phantom writes sentinel values into PatientName, PatientID, PatientBirthDate, AccessionNumber
and InstitutionName. The test damages a phantom cohort so that the reader warns and raises, runs
the data pipeline and the quality report over it, and searches every output for those values.
"""
import logging
import shutil
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from mgmt_nb import phantom
from mgmt_nb.core import MGMTDataError
from mgmt_nb.data import read_volume
from mgmt_nb.dataloader import cohort_table, prepare_volumes, skipped_patients
from mgmt_nb.eda import cohort_overview, describe_series, quality_report, write_quality_report

from dicom_fixtures import other_orientation

IDENTIFIER_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName")
# Defaults for phantoms written before the AccessionNumber and InstitutionName sentinels existed.
ACCESSION_PREFIX = getattr(phantom, "SENTINEL_ACCESSION_PREFIX", "SENTINEL-ACC-")
INSTITUTION = getattr(phantom, "SENTINEL_INSTITUTION", "Sentinel Institution Phantom")


def dicom_files(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.dcm") if path.is_file())


def add_missing_sentinels(root: Path) -> None:
    "Write the AccessionNumber and InstitutionName sentinels into every file that lacks them."
    for index, path in enumerate(dicom_files(root)):
        dataset = pydicom.dcmread(path)
        if str(dataset.get("AccessionNumber", "")).startswith(ACCESSION_PREFIX) and dataset.get("InstitutionName") == INSTITUTION:
            continue
        dataset.AccessionNumber = f"{ACCESSION_PREFIX}{index:04d}"
        dataset.InstitutionName = INSTITUTION
        dataset.save_as(path)


def identifier_values(root: Path) -> set[str]:
    "Collect every identifier value in the cohort's DICOM headers, and check that each keyword holds a sentinel."
    values = {keyword: set() for keyword in IDENTIFIER_KEYWORDS}
    for path in dicom_files(root):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in IDENTIFIER_KEYWORDS:
            if keyword in dataset and str(dataset[keyword].value):
                values[keyword].add(str(dataset[keyword].value))
    for keyword, found in values.items():
        assert found, f"the phantom wrote no {keyword}, so the test would search for nothing"
    assert all(value.startswith(phantom.SENTINEL_NAME_PREFIX) for value in values["PatientName"])
    assert values["PatientBirthDate"] == {phantom.SENTINEL_BIRTH_DATE}
    return set().union(*values.values())


def search_terms(values: set[str]) -> set[str]:
    "Lower-case search terms: the header values, their name components, the birth date as ISO text, and 'sentinel' for any other formatting."
    terms = set(values) | {"sentinel"}
    for value in values:
        terms.update(part for part in value.split("^") if len(part) > 3)
    birth = phantom.SENTINEL_BIRTH_DATE
    terms.add(f"{birth[:4]}-{birth[4:6]}-{birth[6:]}")
    return {term.lower() for term in terms}


def cache_contents(path: Path) -> bytes:
    "Return a cache file's bytes, followed by the names and decompressed bytes of its members when it is a zip (.npz) archive."
    contents = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                contents += member.encode() + archive.read(member)
    return contents


def new_copy(source: Path, target: Path, edit) -> Path:
    dataset = pydicom.dcmread(source)
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    edit(dataset)
    dataset.save_as(target)
    return target


def damage_cohort(root: Path) -> None:
    "Add problems that make the reader warn (patients 0 and 2) or raise (patients 1 and 3, and an unlabelled folder)."
    patients = sorted((root / "train").iterdir())
    first = patients[0] / "FLAIR"
    slices = sorted(first.glob("*.dcm"))

    def make_localizer(dataset):
        dataset.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        dataset.ImageOrientationPatient = other_orientation(dataset)

    new_copy(slices[2], first / "Image-scout.dcm", make_localizer)
    shutil.copyfile(slices[5], first / "Image-copy.dcm")

    def make_ct(dataset):
        dataset.Modality = "CT"

    new_copy(sorted((patients[1] / "FLAIR").glob("*.dcm"))[4], patients[1] / "FLAIR" / "Image-ct.dcm", make_ct)

    for path in sorted((patients[2] / "FLAIR").glob("*.dcm")):
        dataset = pydicom.dcmread(path)
        del dataset.ImagePositionPatient
        dataset.save_as(path)

    victim = sorted((patients[3] / "FLAIR").glob("*.dcm"))[3]
    dataset = pydicom.dcmread(victim)
    del dataset.ImageOrientationPatient
    dataset.save_as(victim)

    unlabelled = root / "train" / "99999"
    shutil.copytree(patients[0], unlabelled)
    truncated = sorted((unlabelled / "FLAIR").glob("*.dcm"))[1]
    truncated.write_bytes(truncated.read_bytes()[:400])


@pytest.fixture()
def damaged_cohort(tmp_path):
    root = phantom.make_phantom_cohort(
        tmp_path / "cohort", n_patients=4, layout="rsna", sequences=("FLAIR",), workers=1, progress=False,
    )
    add_missing_sentinels(root)
    values = identifier_values(root)
    damage_cohort(root)
    return root, values


def test_identifiers_stay_out_of_outputs(damaged_cohort, tmp_path, caplog, capsys):
    root, values = damaged_cohort
    cache_root = tmp_path / "volume-cache"
    caplog.set_level(logging.DEBUG)

    table = cohort_table(root, sequences=["FLAIR"])
    outputs = {"cohort_table skips": skipped_patients(table).to_csv()}

    messages, warnings, volumes = [], [], []
    # The unlabelled folder is not in the table, so its truncated file is read here directly.
    sources = [*table["FLAIR"], str(root / "train" / "99999" / "FLAIR")]
    for source in sources:
        try:
            volume = read_volume(source)
        except MGMTDataError as error:
            messages.append(f"{error!s} | {error!r} | {error.problem} | {error.fix}")
            continue
        warnings.extend(volume.warnings)
        volumes.append(repr(volume))
        outputs[f"describe_series {Path(source).parent.name}"] = repr(describe_series(source))
    assert len(messages) == 3, messages
    assert warnings, "no reader warning, so the test does not cover warnings"
    outputs.update({"error messages": "\n".join(messages), "reader warnings": "\n".join(warnings), "volumes": "\n".join(volumes)})

    ready, skipped = prepare_volumes(table, "FLAIR", (16, 16, 8), cache_root=cache_root, progress=False)
    assert len(ready) == 2
    assert len(skipped) == 2
    outputs["prepare_volumes"] = ready.to_csv() + skipped.to_csv()
    outputs["cohort_overview"] = cohort_overview(table, progress=False).to_csv()

    report = quality_report(table, progress=False)
    html_path = write_quality_report(report, tmp_path / "report" / "quality.html")
    outputs["quality report tables"] = "\n".join(
        [report.series.to_csv(), report.skipped.to_csv(), *(frame.to_csv() for frame in report.summary.values())]
    )
    outputs["quality report HTML"] = html_path.read_text()

    cache_files = sorted(path for path in cache_root.rglob("*") if path.is_file())
    assert len(cache_files) == len(ready)
    outputs["cache file names"] = "\n".join(str(path.relative_to(cache_root)) for path in cache_files)
    captured = capsys.readouterr()
    outputs["stdout and stderr"] = captured.out + captured.err
    outputs["log records"] = "\n".join(f"{record.name} {record.levelname} {record.getMessage()}" for record in caplog.records)
    outputs["log text"] = caplog.text
    assert any(record.levelno == logging.WARNING and record.name.startswith("mgmt_nb") for record in caplog.records)

    terms = search_terms(values)
    leaks = [(name, term) for name, text in outputs.items() for term in terms if term in text.lower()]
    for path in cache_files:
        contents = cache_contents(path).lower()
        leaks += [(f"cache file {path.name}", term) for term in terms if term.encode() in contents]
    assert not leaks, leaks
