"""Grad-CAM on every backbone of build_model, tumour masks of each phantom layout, and montages of a trained run."""
import json
import shutil

import keras
import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from mgmt_nb.core import LABEL_COLUMN, PHANTOM_MARKER, MGMTDataError
from mgmt_nb.data import preprocess_volume, read_volume
from mgmt_nb.dataloader import cohort_table
from mgmt_nb.gradcam import (
    compute_grad_cam, grad_cam, gradcam_layer, layers_by_resolution, phantom_tumour_masks, preprocess_mask,
    save_gradcam_montages, tumour_mask,
)
from mgmt_nb.model import MIN_SPATIAL_SIZE, build_model
from mgmt_nb.phantom import make_phantom_cohort

# One backbone per block design: basic and bottleneck residual blocks, dense blocks, depthwise
# MBConv blocks and depthwise-separable Xception blocks. Deeper variants repeat the same layers.
BACKBONES = ["resnet18", "resnet50", "densenet121", "efficientnetb0", "xception"]


@pytest.mark.parametrize("arch", BACKBONES)
def test_grad_cam_every_backbone(arch):
    side = max(MIN_SPATIAL_SIZE[arch], 32)
    model = build_model(arch, input_shape=(side, side, side, 1), dense_units=4)
    volume = np.random.default_rng(0).random((side, side, side, 1), dtype=np.float32)
    result = compute_grad_cam(model, volume)  # raises if the chained forward pass disagrees with the model
    assert result["map"].shape == (side, side, side)
    assert result["map"].dtype == np.float32
    assert result["map"].min() >= 0
    assert result["map"].max() <= 1
    assert result["layer"] == gradcam_layer(model)
    assert result["layer"] in layers_by_resolution(model)
    backbone = model.get_layer(arch)
    assert min(backbone.get_layer(result["layer"]).output.shape[1:4]) >= 2


def test_grad_cam_several_channels():
    model = build_model("resnet18", input_shape=(32, 32, 16, 2), dense_units=4)
    volume = np.random.default_rng(1).random((32, 32, 16, 2), dtype=np.float32)
    assert grad_cam(model, volume).shape == (32, 32, 16)
    with pytest.raises(ValueError, match=r"does not match the model input \(32, 32, 16, 2\)"):
        grad_cam(model, volume[..., 0])


def test_grad_cam_mixed_precision():
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("resnet18", input_shape=(32, 32, 16, 1), dense_units=4)
        cam = grad_cam(model, np.random.default_rng(2).random((32, 32, 16), dtype=np.float32))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert cam.dtype == np.float32
    assert np.isfinite(cam).all()


def test_grad_cam_last_layer_not_binary():
    volume = keras.Input((16, 16, 8, 1))
    features = keras.layers.GlobalAveragePooling3D()(keras.layers.Conv3D(2, 3, padding="same", name="conv")(volume))
    model = keras.Model(volume, keras.layers.Dense(2, activation="softmax", name="classes")(features))
    with pytest.raises(ValueError, match="'classes' must be Dense\\(1\\)"):
        grad_cam(model, np.zeros((16, 16, 8), dtype=np.float32))


@pytest.fixture(scope="module")
def brats_cohort(tmp_path_factory):
    "A BraTS-layout phantom cohort, which stores label maps, with FLAIR only."
    root = tmp_path_factory.mktemp("gradcam") / "brats"
    return make_phantom_cohort(root, layout="brats", n_patients=2, signal=0.8, seed=11, sequences=("FLAIR",), progress=False, workers=1)


def test_segmentation_matches_regenerated_masks(brats_cohort):
    table = cohort_table(brats_cohort, sequences=["FLAIR"])
    row = table.iloc[0]
    flair = read_volume(row["FLAIR"])
    from_segmentation = tumour_mask(row, brats_cohort, flair)  # the `seg` column comes first
    regenerated = phantom_tumour_masks(brats_cohort, row["patient_id"], flair)["tumour"]
    assert from_segmentation.any()
    np.testing.assert_array_equal(from_segmentation, regenerated)


def test_masks_resampled_onto_dicom_series(phantom_pair):
    train_root, _ = phantom_pair  # RSNA layout: DICOM series resampled into their acquisition planes
    row = cohort_table(train_root, sequences=["FLAIR"]).iloc[0]
    flair = read_volume(row["FLAIR"])
    tumour = preprocess_mask(phantom_tumour_masks(train_root, row["patient_id"], flair)["tumour"], flair, (64, 64, 32))
    image = preprocess_volume(flair, (64, 64, 32))
    assert tumour.any()
    assert image[tumour].mean() > 1.5 * image[~tumour & (image > 0.05)].mean(), "FLAIR oedema must be bright inside the mask"


def test_phantom_version_mismatch(brats_cohort, tmp_path):
    copy = shutil.copytree(brats_cohort, tmp_path / "old")
    marker = json.loads((copy / PHANTOM_MARKER).read_text())
    marker["phantom_version"] = "0"
    (copy / PHANTOM_MARKER).write_text(json.dumps(marker))
    patient_id = next(iter(marker["patient_index"]))
    with pytest.raises(MGMTDataError, match="phantom version 0"):
        phantom_tumour_masks(copy, patient_id)


def test_planted_duplicate_has_no_mask(brats_cohort, tmp_path):
    copy = shutil.copytree(brats_cohort, tmp_path / "planted")
    marker = json.loads((copy / PHANTOM_MARKER).read_text())
    patient_id = next(iter(marker["patient_index"]))
    marker["planted_duplicates"] = {patient_id: "00042"}
    (copy / PHANTOM_MARKER).write_text(json.dumps(marker))
    with pytest.raises(MGMTDataError, match="re-acquisition of training patient 00042"):
        phantom_tumour_masks(copy, patient_id)


@pytest.mark.parametrize("cohort", ["external", "validation"])
def test_montages_of_trained_run(phantom_run, cohort, tmp_path):
    table = save_gradcam_montages(phantom_run, cohort=cohort, top_k=2, output_dir=tmp_path)
    predictions = pd.read_csv(phantom_run / f"predictions_{cohort}.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert 1 <= len(table) <= 2  # top_k correct predictions, fewer when the short run has fewer
    assert table.synthetic.all()
    for row in table.itertuples():
        assert (tmp_path / f"{cohort}_{row.patient_id}.png").is_file()
        assert row.MGMT_value == predictions.loc[row.patient_id, LABEL_COLUMN]
        assert row.probability == pytest.approx(predictions.loc[row.patient_id, "probability"], abs=1e-4)
        assert 0 < row.volume_fraction < 0.2
    # The default map: HiResCAM's absolute map at the finest layer.
    assert set(table.weighting) == {"hires_cam"}
    assert set(table.target) == {"absolute"}
    assert set(table.layer) == {"relu0"}
    saved = pd.read_csv(tmp_path / f"{cohort}_mass_fractions.csv", dtype={"patient_id": str})
    assert list(saved.patient_id) == list(table.patient_id)


def test_montages_named_patients_and_target(phantom_run, tmp_path):
    patient_id = pd.read_csv(phantom_run / "predictions_external.csv", dtype={"patient_id": str}).patient_id.iloc[0]
    table = save_gradcam_montages(phantom_run, patients=[patient_id], target="unmethylated", layer="stage2_unit1_relu1", output_dir=tmp_path)
    assert list(table.target) == ["unmethylated"]
    assert list(table.layer) == ["stage2_unit1_relu1"]
    classic = save_gradcam_montages(phantom_run, patients=[patient_id], target="predicted", layer=None, weighting="grad_cam", output_dir=tmp_path)
    assert list(classic.weighting) == ["grad_cam"]
    assert list(classic.layer) == ["stage2_unit1_relu1"]
    assert list(classic.target) in (["methylated"], ["unmethylated"])
    assert (tmp_path / f"external_{patient_id}_grad_cam_predicted_default_layer.png").is_file()
    with pytest.raises(ValueError, match="weighting must be"):
        save_gradcam_montages(phantom_run, patients=[patient_id], weighting="gradcam", output_dir=tmp_path)
    with pytest.raises(ValueError, match="target must be"):
        save_gradcam_montages(phantom_run, patients=[patient_id], target="both", output_dir=tmp_path)
