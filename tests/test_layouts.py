"""Cohort layouts (BraTS 2021, NIfTI with DSC perfusion) and the preprocessing cache, on small synthetic phantom cohorts."""
import json
import multiprocessing
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import mgmt_nb.data
import mgmt_nb.dataloader
import mgmt_nb.perfusion
from mgmt_nb.core import MGMTDataError
from mgmt_nb.data import preprocess_volume, read_volume
from mgmt_nb.dataloader import (
    cached_volume,
    cached_warnings,
    cohort_table,
    detect_layout,
    load_cached_volume,
    make_dataset,
    prepare_sequences,
    prepare_volumes,
    skipped_patients,
    volume_cache_path,
    write_cached_volume,
)
from mgmt_nb.perfusion import DSC_SUFFIX, PERFUSION_SEQUENCES, perfusion_maps
from mgmt_nb.phantom import (
    BRATS_LABELS,
    SENTINEL_ACCESSION_PREFIX,
    SENTINEL_BIRTH_DATE,
    SENTINEL_ID_PREFIX,
    SENTINEL_INSTITUTION,
    SENTINEL_NAME_PREFIX,
    make_phantom_cohort,
)

SIZE = (20, 20, 10)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    "Small synthetic cohorts: RSNA and BraTS layouts of the same patients, and NIfTI with DSC series."
    root = tmp_path_factory.mktemp("layouts")
    return {
        "rsna": make_phantom_cohort(root / "rsna", layout="rsna", n_patients=3, seed=7, sequences=("FLAIR",), progress=False, workers=1),
        "brats": make_phantom_cohort(root / "brats", layout="brats", n_patients=3, seed=7, sequences=("FLAIR", "T2w"), progress=False, workers=1),
        "perfusion": make_phantom_cohort(root / "perfusion", layout="nifti", n_patients=3, seed=8, sequences=("FLAIR",), progress=False, workers=1, perfusion=True),
    }


@pytest.fixture()
def perfusion_copy(tmp_path, cohorts):
    "A private copy of the perfusion cohort that a test may change."
    target = tmp_path / "perfusion"
    shutil.copytree(cohorts["perfusion"], target)
    return target


# BraTS 2021 layout


def test_brats_layout_detected(cohorts):
    assert detect_layout(cohorts["brats"]) == "brats"
    assert detect_layout(cohorts["rsna"]) == "rsna"
    assert detect_layout(cohorts["perfusion"]) == "nifti"


def test_brats_table_matches_rsna_patients(cohorts):
    brats = cohort_table(cohorts["brats"], sequences=["FLAIR", "T2w"])
    rsna = cohort_table(cohorts["rsna"], sequences=["FLAIR"])
    assert brats.attrs["layout"] == "brats"
    assert list(brats.columns) == ["patient_id", "MGMT_value", "FLAIR", "T2w", "seg"]
    assert brats.patient_id.tolist() == rsna.patient_id.tolist()
    assert brats.MGMT_value.tolist() == rsna.MGMT_value.tolist()
    for row in brats.itertuples(index=False):
        assert Path(row.FLAIR).name == f"BraTS2021_{row.patient_id}_flair.nii.gz"
        assert Path(row.T2w).is_file()
        assert Path(row.seg).name == f"BraTS2021_{row.patient_id}_seg.nii.gz"


def test_brats_segmentation_values(cohorts):
    brats = cohort_table(cohorts["brats"], sequences=["FLAIR"])
    segmentation = read_volume(brats.seg[0]).data
    assert set(np.unique(segmentation).tolist()) == {0.0, *map(float, BRATS_LABELS.values())}


def test_brats_labels_from_rsna_csv(tmp_path, cohorts):
    root = tmp_path / "brats"
    shutil.copytree(cohorts["brats"], root)
    rsna_labels = root / "train_labels.csv"
    moved_labels = tmp_path / "rsna_train_labels.csv"
    shutil.move(rsna_labels, moved_labels)
    with pytest.raises(MGMTDataError, match="BraTS 2021 has no MGMT labels of its own"):
        cohort_table(root)
    assert len(cohort_table(root, sequences=["FLAIR"], labels=moved_labels)) == 3
    shutil.copy(moved_labels, root / "labels.csv")
    assert len(cohort_table(root, sequences=["FLAIR"])) == 3


def test_brats_skips_missing_and_unlabelled(tmp_path, cohorts):
    labels = pd.read_csv(cohorts["brats"] / "train_labels.csv", dtype=str)
    subset = tmp_path / "subset.csv"
    pd.concat([labels.iloc[:2], pd.DataFrame({"BraTS21ID": ["99990"], "MGMT_value": ["1"]})]).to_csv(subset, index=False)
    table = cohort_table(cohorts["brats"], sequences=["FLAIR"], labels=subset)
    skipped = skipped_patients(table)
    assert table.patient_id.tolist() == labels.BraTS21ID[:2].tolist()
    assert skipped.patient_id.tolist() == ["99990", labels.BraTS21ID[2]]
    assert "has no folder" in skipped.reason[0]
    assert "no label" in skipped.reason[1]


def test_brats_volumes_prepare(tmp_path, cohorts):
    table = cohort_table(cohorts["brats"], sequences=["FLAIR"])
    ready, skipped = prepare_volumes(table, "FLAIR", SIZE, cache_root=tmp_path / "cache", progress=False)
    assert len(ready) == 3
    assert len(skipped) == 0
    assert load_cached_volume(ready.path[0]).shape == SIZE


def test_perfusion_sequences_need_nifti_layout(cohorts):
    for layout in ("rsna", "brats"):
        with pytest.raises(MGMTDataError, match="no DSC perfusion series"):
            cohort_table(cohorts[layout], sequences=["FLAIR", "rCBV"])


def test_rsna_host_exclusions_skipped(tmp_path, cohorts, caplog):
    root = tmp_path / "rsna"
    shutil.copytree(cohorts["rsna"], root)
    (root / "SYNTHETIC_PHANTOM.json").unlink()  # a real cohort from here on
    labels = pd.read_csv(root / "train_labels.csv", dtype=str)
    shutil.move(root / "train" / labels.BraTS21ID[0], root / "train" / "00109")
    labels.loc[0, "BraTS21ID"] = "00109"
    labels.to_csv(root / "train_labels.csv", index=False)
    table = cohort_table(root, sequences=["FLAIR"])
    assert "00109" not in table.patient_id.tolist()
    assert skipped_patients(table).patient_id.tolist() == ["00109"]
    assert "excluded by the RSNA-MICCAI 2021 host" in caplog.text
    assert "00109" in cohort_table(root, sequences=["FLAIR"], exclude={}).patient_id.tolist()


# DSC-derived sequences


@pytest.mark.parametrize("sequence", PERFUSION_SEQUENCES)
def test_perfusion_map_end_to_end(tmp_path, cohorts, sequence):
    table = cohort_table(cohorts["perfusion"], sequences=["FLAIR", sequence])
    assert Path(table[sequence][0]).name == f"{table.patient_id[0]}_{DSC_SUFFIX}.nii.gz"
    ready, skipped = prepare_volumes(table, sequence, SIZE, cache_root=tmp_path / "cache", progress=False)
    assert len(ready) == 3
    assert len(skipped) == 0
    volume = load_cached_volume(ready.path[0])
    expected = preprocess_volume(perfusion_maps(table[sequence][0])[sequence], size=SIZE)
    assert volume.shape == SIZE
    assert np.abs(volume - expected).max() <= 1 / 65535


def test_perfusion_channels_stack(tmp_path, cohorts):
    table = cohort_table(cohorts["perfusion"], sequences=["FLAIR", "rCBV", "TTP"])
    stacked, skipped = prepare_sequences(table, ["FLAIR", "rCBV", "TTP"], SIZE, cache_root=tmp_path / "cache", progress=False)
    assert len(stacked) == 3
    assert len(skipped) == 0
    volumes, labels = next(iter(make_dataset(stacked, batch_size=3)))
    assert tuple(volumes.shape) == (3, *SIZE, 3)


def test_patient_without_dsc_is_listed_skip(tmp_path, perfusion_copy):
    table = cohort_table(perfusion_copy, sequences=["rCBV"])
    Path(table.rCBV[2]).unlink()
    ready, skipped = prepare_volumes(table, "rCBV", SIZE, cache_root=tmp_path / "cache", progress=False)
    assert ready.patient_id.tolist() == table.patient_id[:2].tolist()
    assert skipped.patient_id.tolist() == [table.patient_id[2]]
    assert "DSC perfusion series not found" in skipped.reason[0]
    assert table.rCBV[2] in skipped.reason[0]


def test_bad_dsc_is_listed_skip(tmp_path, perfusion_copy):
    table = cohort_table(perfusion_copy, sequences=["TTP"])
    image = nib.load(table.TTP[1])
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[..., :6], image.affine, image.header), table.TTP[1])
    ready, skipped = prepare_volumes(table, "TTP", SIZE, cache_root=tmp_path / "cache", progress=False)
    assert len(ready) == 2
    assert skipped.patient_id.tolist() == [table.patient_id[1]]
    assert "only 6 frames" in skipped.reason[0]


def test_perfusion_warnings_reach_ready_table(tmp_path, perfusion_copy):
    table = cohort_table(perfusion_copy, sequences=["rCBV"])
    image = nib.load(table.rCBV[0])
    stopped_early = np.asanyarray(image.dataobj)[..., :10]  # the bolus peaks at about frame 9 to 11
    nib.save(nib.Nifti1Image(stopped_early, image.affine, image.header), table.rCBV[0])
    ready, _ = prepare_volumes(table, "rCBV", SIZE, cache_root=tmp_path / "cache", progress=False)
    assert any("last frame" in text for text in ready.warnings[0]), ready.warnings[0]
    assert ready.warnings[1] == []
    stacked, _ = prepare_sequences(table, ["rCBV"], SIZE, cache_root=tmp_path / "cache", progress=False)
    assert stacked.warnings[0][0].startswith("rCBV: ")


# Cache keys


def test_cache_key_changes_with_each_parameter(monkeypatch, cohorts, tmp_path):
    source = cohort_table(cohorts["perfusion"], sequences=["FLAIR"]).FLAIR[0]
    dsc = cohort_table(cohorts["perfusion"], sequences=["rCBV"]).rCBV[0]
    base = volume_cache_path(source, SIZE, tmp_path)
    base_rcbv = volume_cache_path(dsc, SIZE, tmp_path, derived="rCBV")
    keys = {"base": base, "rCBV": base_rcbv}
    assert volume_cache_path(source, SIZE, tmp_path) == base  # stable

    keys["size"] = volume_cache_path(source, (20, 20, 11), tmp_path)
    keys["TTP"] = volume_cache_path(dsc, SIZE, tmp_path, derived="TTP")
    keys["DSC plain"] = volume_cache_path(dsc, SIZE, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(mgmt_nb.dataloader, "PREPROCESS_VERSION", mgmt_nb.dataloader.PREPROCESS_VERSION + 1)
        keys["preprocess version"] = volume_cache_path(source, SIZE, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(mgmt_nb.dataloader, "CACHE_FORMAT", "npz-test")
        keys["format"] = volume_cache_path(source, SIZE, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(mgmt_nb.data.crop_dark_border, "__defaults__", (0.1,))
        keys["crop threshold"] = volume_cache_path(source, SIZE, tmp_path)
    with monkeypatch.context() as patch:
        low, high, foreground, method, level = mgmt_nb.data.normalize_intensity.__defaults__
        patch.setattr(mgmt_nb.data.normalize_intensity, "__defaults__", (1.0, high, foreground, method, level))
        keys["low percentile"] = volume_cache_path(source, SIZE, tmp_path)
        patch.setattr(mgmt_nb.data.normalize_intensity, "__defaults__", (low, 99.0, foreground, method, level))
        keys["high percentile"] = volume_cache_path(source, SIZE, tmp_path)
        patch.setattr(mgmt_nb.data.normalize_intensity, "__defaults__", (low, high, foreground, "percentile", level))
        keys["normalisation method"] = volume_cache_path(source, SIZE, tmp_path)
        patch.setattr(mgmt_nb.data.normalize_intensity, "__defaults__", (low, high, foreground, method, 0.5))
        keys["reference level"] = volume_cache_path(source, SIZE, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(mgmt_nb.perfusion, "PERFUSION_VERSION", mgmt_nb.perfusion.PERFUSION_VERSION + 1)
        keys["perfusion version"] = volume_cache_path(dsc, SIZE, tmp_path, derived="rCBV")
        assert volume_cache_path(source, SIZE, tmp_path) == base  # structural keys ignore perfusion settings
    with monkeypatch.context() as patch:
        repetition_time, baseline_frames, _ = mgmt_nb.perfusion.perfusion_maps.__defaults__
        patch.setattr(mgmt_nb.perfusion.perfusion_maps, "__defaults__", (repetition_time, baseline_frames, 0.2))
        keys["background fraction"] = volume_cache_path(dsc, SIZE, tmp_path, derived="rCBV")

    assert len(set(keys.values())) == len(keys), keys
    assert volume_cache_path(source, SIZE, tmp_path) == base  # every patch was undone


def test_cache_names_hold_no_identifiers(tmp_path, cohorts):
    table = cohort_table(cohorts["perfusion"], sequences=["FLAIR", "rCBV"])
    for sequence in ("FLAIR", "rCBV"):
        ready, _ = prepare_volumes(table, sequence, SIZE, cache_root=tmp_path, progress=False)
        for patient_id, path in zip(ready.patient_id, ready.path):
            relative = Path(path).relative_to(tmp_path).as_posix()
            assert patient_id not in relative
            assert DSC_SUFFIX not in relative
            assert sequence not in relative
            assert len(Path(path).stem) == 64  # a SHA-256 hex digest


def test_no_dicom_identifier_in_cache(tmp_path, cohorts):
    table = cohort_table(cohorts["rsna"], sequences=["FLAIR"])
    prepare_volumes(table, "FLAIR", SIZE, cache_root=tmp_path, progress=False)
    sentinels = [SENTINEL_NAME_PREFIX, SENTINEL_ID_PREFIX, SENTINEL_BIRTH_DATE, SENTINEL_ACCESSION_PREFIX, SENTINEL_INSTITUTION]
    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) == 3
    for path in files:
        with zipfile.ZipFile(path) as archive:
            contents = b"".join(archive.read(name) for name in archive.namelist())  # decompressed
        for sentinel in sentinels:
            assert sentinel.encode() not in contents, (path, sentinel)
            assert sentinel not in path.name


# Stale cache


def test_changed_source_file_gets_new_volume(tmp_path, perfusion_copy):
    table = cohort_table(perfusion_copy, sequences=["FLAIR"])
    before, _ = prepare_volumes(table, "FLAIR", SIZE, cache_root=tmp_path / "cache", progress=False)
    source = Path(table.FLAIR[0])
    image = nib.load(source)
    data = np.asanyarray(image.dataobj).copy()
    data[: data.shape[0] // 2] = 0  # erase one half of the brain
    nib.save(nib.Nifti1Image(data, image.affine, image.header), source)
    after, _ = prepare_volumes(table, "FLAIR", SIZE, cache_root=tmp_path / "cache", progress=False)
    assert after.path[0] != before.path[0]
    assert after.path[1:].tolist() == before.path[1:].tolist()
    expected = preprocess_volume(read_volume(source), size=SIZE)
    assert np.abs(load_cached_volume(after.path[0]) - expected).max() <= 1 / 65535
    assert not np.allclose(load_cached_volume(before.path[0]), load_cached_volume(after.path[0]))


def test_changed_dsc_file_gets_new_maps(tmp_path, perfusion_copy):
    table = cohort_table(perfusion_copy, sequences=["rCBV", "TTP"])
    before = {name: prepare_volumes(table, name, SIZE, cache_root=tmp_path, progress=False)[0].path[0] for name in ("rCBV", "TTP")}
    source = Path(table.rCBV[0])
    image = nib.load(source)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[..., :-2], image.affine, image.header), source)
    after = {name: prepare_volumes(table, name, SIZE, cache_root=tmp_path, progress=False)[0].path[0] for name in ("rCBV", "TTP")}
    for name in ("rCBV", "TTP"):
        assert after[name] != before[name]


def test_unreadable_cache_file_is_rebuilt(tmp_path, cohorts, caplog):
    source = cohort_table(cohorts["perfusion"], sequences=["FLAIR"]).FLAIR[0]
    target = cached_volume(source, SIZE, tmp_path)
    expected = load_cached_volume(target)
    target.write_bytes(b"\x00" * 100)
    assert cached_volume(source, SIZE, tmp_path) == target
    assert np.array_equal(load_cached_volume(target), expected)
    assert "cannot be read" in caplog.text


# Concurrent writers


def _write_same_key(source: str, cache_root: str, barrier, repeats: int) -> None:
    "Worker: fill one cache key, then rewrite it `repeats` times, starting together with the other workers."
    from mgmt_nb.dataloader import cached_volume, load_cached_volume, write_cached_volume

    barrier.wait()
    target = cached_volume(source, SIZE, cache_root)
    data = load_cached_volume(target)
    for _ in range(repeats):
        write_cached_volume(target, data, ["written by a worker"])


def test_concurrent_writers_leave_complete_file(tmp_path, cohorts):
    source = cohort_table(cohorts["perfusion"], sequences=["FLAIR"]).FLAIR[0]
    expected = preprocess_volume(read_volume(source), size=SIZE)
    target = volume_cache_path(source, SIZE, tmp_path)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    workers = [context.Process(target=_write_same_key, args=(source, str(tmp_path), barrier, 20)) for _ in range(2)]
    for worker in workers:
        worker.start()
    barrier.wait(timeout=120)
    reads = 0
    while any(worker.is_alive() for worker in workers):
        if target.is_file():
            assert np.abs(load_cached_volume(target) - expected).max() <= 1 / 65535
            reads += 1
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert np.abs(load_cached_volume(target) - expected).max() <= 1 / 65535
    assert cached_warnings(target) == ["written by a worker"]
    assert [path.name for path in target.parent.iterdir()] == [target.name]  # no temporary files left
    assert reads > 0


def test_write_cached_volume_metadata(tmp_path):
    target = write_cached_volume(tmp_path / "volume.npz", np.full((2, 3, 4), 0.5, np.float32), ["a warning"])
    with zipfile.ZipFile(target) as archive:
        metadata = json.loads(archive.read("metadata.json"))
    assert metadata["warnings"] == ["a warning"]
    assert metadata["encoding"].startswith("uint16")
