#!/usr/bin/env python
"""Measure how much of the Grad-CAM map of a model trained on the synthetic phantom lies in the tumour.

The phantom's planted signal lives in the tumour (oedema halo thickness and necrotic core fraction),
so a model that learned it from the tumour should put Grad-CAM mass there. The script takes a
training run on the phantom: `--run-dir`, else `runs/demo` when that run's cohort matches the
installed phantom version, else an earlier run in `--work-dir`, else it trains one with papermill
as `make demo` does. It takes the first `--n-patients` patients of the external (NIfTI) cohort, in
file order, and regenerates their tumour masks from the cohort's marker file. It reports the share
of the map's mass inside the tumour (enhancing + core + oedema) next to the tumour's share of the
head, with the map set to 0 outside `head_mask` (the "head" rows), and next to the tumour's share
of the whole volume for the unmasked map (the "volume" rows):

1. montages and a per-patient table with save_gradcam_montages' default map (HiResCAM's absolute
   map at the finest layer, inside the head), with a summary per predicted class;
2. a sweep over one layer per resolution (`layers_by_resolution`, or the `--layer` names) and each
   `--weighting`, for the predicted class, each class and the absolute map, for the trained model
   and for a control with random weights;
3. the same share for the absolute input gradient times the input, a finer attribution than Grad-CAM;
4. a check for a shortcut that needs no tumour: the mean preprocessed intensity of the brain outside
   the tumour, and its AUC for the label over the whole cohort, under each normalisation method
   of `normalize_intensity` (`--shortcut-only` runs this part alone).

All figures come from a synthetic phantom cohort and carry no information about MGMT biology.

Example (7 min 46 s on 2 CPU cores, training included):
    python tools/gradcam_phantom.py --n-patients 10
A map takes about 0.15 s once the model's map function is compiled, so all 40 external patients
of a sweep run take about a minute:
    python tools/gradcam_phantom.py --run-dir runs/sweep/resnet18-FLAIR-seed42 --n-patients 40
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TRAIN_NOTEBOOK = REPO / "nbs" / "05_train.ipynb"
# The demo settings of the Makefile, with fewer training patients and epochs to keep the run short.
TRAIN_PARAMETERS = {
    "arch": "resnet18", "seq": "FLAIR", "image_size": 64, "depth": 32, "patience": 5, "learning_rate": 3e-4,
    "batch_size": 8, "phantom_signal": 0.8,
}


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, help="training run on the phantom to explain (default: runs/demo when usable, else a new run)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/mgmt_nb_gradcam_phantom"), help="folder for a new training run and the maps (default: %(default)s)")
    parser.add_argument("--n-patients", type=int, default=10, help="number of patients, taken in file order from the predictions file (default: %(default)s)")
    parser.add_argument("--cohort", choices=("external", "validation"), default="external", help="cohort of the patients (default: %(default)s). The external NIfTI files keep the generator's grid, the DICOM validation series are resampled")
    parser.add_argument("--layer", action="append", help="layer name for the sweep, repeatable (default: one layer per resolution, from layers_by_resolution)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of a new training run (default: %(default)s)")
    parser.add_argument("--phantom-train", type=int, default=80, help="phantom training patients of a new training run (default: %(default)s)")
    parser.add_argument("--weighting", action="append", choices=("grad_cam", "hires_cam"), help="map weighting for the sweep, repeatable (default: both grad_cam and hires_cam)")
    parser.add_argument("--no-control", action="store_true", help="skip the control model with random weights")
    parser.add_argument("--shortcut-only", action="store_true", help="run only part 4, the shortcut check")
    return parser.parse_args(argv)


def run_is_usable(run_dir: Path) -> tuple[bool, str]:
    "Return (usable, reason): the run has weights and its external phantom cohort matches the installed phantom version."
    from mgmt_nb.core import phantom_info
    from mgmt_nb.phantom import PHANTOM_VERSION

    params_path = run_dir / "params.json"
    missing = [name for name in ("params.json", "best.weights.h5") if not (run_dir / name).is_file()]
    if missing:
        return False, f"{run_dir} has no {' or '.join(missing)}; pass the folder of a finished training run"
    params = json.loads(params_path.read_text())
    info = phantom_info(params.get("external_dir") or "")
    if info is None:
        return False, f"the external cohort of {run_dir} is not a phantom cohort"
    if str(info.get("phantom_version")) != str(PHANTOM_VERSION):
        return False, f"{run_dir} was trained on phantom version {info.get('phantom_version')}, this mgmt_nb generates version {PHANTOM_VERSION}"
    return True, "ok"


def train_run(work_dir: Path, epochs: int, phantom_train: int) -> Path:
    "Train a phantom run with papermill, as `make demo` does, and return its folder."
    work_dir.mkdir(parents=True, exist_ok=True)
    parameters = {**TRAIN_PARAMETERS, "epochs": epochs, "phantom_train": phantom_train, "run_name": "run", "output_dir": str(work_dir)}
    command = [sys.executable, "-m", "papermill", str(TRAIN_NOTEBOOK), str(work_dir / "05_train.ipynb"), "--no-progress-bar", "--cwd", str(REPO / "nbs")]
    for name, value in parameters.items():
        command += ["-p", name, str(value)]
    print("training:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return work_dir / "run"


def choose_run(arguments: argparse.Namespace) -> Path:
    "Return the run to explain: --run-dir, runs/demo when usable, an earlier run in --work-dir, or a new run."
    if arguments.run_dir is not None:
        usable, reason = run_is_usable(arguments.run_dir)
        if not usable:
            raise SystemExit(f"--run-dir cannot be used: {reason}.")
        return arguments.run_dir
    for candidate in (REPO / "runs" / "demo", arguments.work_dir / "run"):
        usable, reason = run_is_usable(candidate)
        print(f"{candidate}: {'using it' if usable else reason}")
        if usable:
            return candidate
    return train_run(arguments.work_dir, arguments.epochs, arguments.phantom_train)


def check_alignment(cohort_root: Path, patient_id: str) -> float:
    "Regenerate one patient's FLAIR with make_patient and return its largest difference to the NIfTI file, relative to the file's maximum."
    from mgmt_nb.core import phantom_info
    from mgmt_nb.data import read_volume
    from mgmt_nb.dataloader import read_labels
    from mgmt_nb.phantom import NIFTI_CALIBRATION, make_patient

    info = phantom_info(cohort_root)
    label = int(read_labels(cohort_root / "labels.csv", "patient_id")[patient_id])
    volumes, _ = make_patient(info["patient_index"][patient_id], label, info["signal"], info["seed"], sequences=("FLAIR",), spacing_mm=info["spacing_mm"])
    stored = read_volume(cohort_root / patient_id / f"{patient_id}_FLAIR.nii.gz")
    if stored.shape != volumes["FLAIR"].shape or not np.allclose(stored.affine, volumes["FLAIR"].affine, atol=1e-3):
        return float("inf")
    scale, offset = NIFTI_CALIBRATION
    regenerated = np.where(volumes["FLAIR"].data > 0, scale * volumes["FLAIR"].data + offset, 0.0)
    return float(np.abs(regenerated - stored.data).max() / stored.data.max())


def control_run(run_dir: Path, work_dir: Path, seed: int = 0) -> Path:
    "Write a copy of the run whose best.weights.h5 holds a randomly initialised model of the same architecture."
    import keras

    from mgmt_nb.model import build_model, save_model_weights

    control = work_dir / "control_random_weights"
    shutil.rmtree(control, ignore_errors=True)
    control.mkdir(parents=True)
    for name in ("params.json", "metrics.json", "predictions_external.csv", "predictions_validation.csv"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, control / name)
    params = json.loads((run_dir / "params.json").read_text())
    keras.utils.set_random_seed(seed)
    shape = (params["image_size"], params["image_size"], params["depth"], len(params["sequences"]))
    save_model_weights(build_model(params["arch"], input_shape=shape, dropout=params["dropout"], l2=params["l2"]), control / "best.weights.h5")
    return control


def check_layers(run_dir: Path, layers: list) -> None:
    "Exit with gradcam_layer's message when a --layer name cannot be used, before any map is computed."
    from mgmt_nb.gradcam import gradcam_layer, load_run_model

    if not layers:
        return
    model, _ = load_run_model(run_dir)
    for layer in layers:
        try:
            gradcam_layer(model, layer)
        except ValueError as error:
            raise SystemExit(f"--layer {layer}: {error}") from None


def print_table(title: str, frame: pd.DataFrame) -> None:
    print(f"\n{title}")
    print(frame.to_string(index=False, float_format=lambda value: f"{value:.3f}"))


def input_gradient_share(model, volume: np.ndarray, mask: np.ndarray, head: np.ndarray) -> dict:
    "Return cam_mass_fraction of input_gradient_map (|d logit / d input * input| summed over channels) inside `mask`, within `head`."
    from mgmt_nb.gradcam import cam_mass_fraction, input_gradient_map

    return cam_mass_fraction(input_gradient_map(model, volume, region=head)["map"], mask, within=head)


def shortcut_check(cohort_root: Path, sequences: list, size: tuple) -> pd.DataFrame:
    "Return, per normalisation method and label, the mean preprocessed intensity of the brain outside the tumour, with its AUC for the label."
    from sklearn.metrics import roc_auc_score

    from mgmt_nb.data import NORMALIZATION_METHODS, antialias, crop_dark_border, normalize_intensity, read_volume, resize_volume
    from mgmt_nb.dataloader import cohort_table
    from mgmt_nb.gradcam import preprocess_mask, tumour_mask

    rows = []
    for _, row in cohort_table(cohort_root, sequences=sequences[:1]).iterrows():
        volume = read_volume(row[sequences[0]])
        mask = tumour_mask(row, cohort_root, volume)
        mask = preprocess_mask(mask, volume, size) if mask is not None else None
        for method in NORMALIZATION_METHODS:
            # preprocess_volume with the given method: crop, anti-alias, normalise, resize, clip
            smoothed = antialias(crop_dark_border(volume.data), size)
            data = np.clip(resize_volume(normalize_intensity(smoothed, method=method), size), 0.0, 1.0)
            brain = data > 0.05  # the background of a preprocessed volume is near 0
            outside = brain & ~mask if mask is not None else brain
            rows.append({"method": method, "label": int(row["MGMT_value"]), "intensity": float(data[outside].mean())})
    frame = pd.DataFrame(rows)
    summary = frame.groupby(["method", "label"]).intensity.mean().unstack("label").add_prefix("mean intensity outside the tumour, label ")
    summary["AUC of that intensity for the label"] = [
        roc_auc_score(group.label, group.intensity) for _, group in frame.groupby("method")
    ]
    return summary.reset_index()


def layer_sweep(runs: dict, patients: list, cohort_root: Path, params: dict, threshold: float, layers, weightings=("grad_cam",)) -> pd.DataFrame:
    "Return the mean share of the map inside the tumour per model, layer, weighting and target, and of the input gradient per model."
    from mgmt_nb.dataloader import cohort_table
    from mgmt_nb.gradcam import (
        TARGETS, WEIGHTING_NAMES, cam_mass_fraction, compute_grad_cam, head_mask, layers_by_resolution, load_patient_inputs, load_run_model,
    )

    size = (params["image_size"], params["image_size"], params["depth"])
    table = cohort_table(cohort_root, sequences=params["sequences"]).set_index("patient_id", drop=False)
    inputs = {patient_id: load_patient_inputs(table.loc[patient_id], cohort_root, params["sequences"], size) for patient_id in patients}
    heads = {patient_id: head_mask(volume) for patient_id, (volume, _) in inputs.items()}
    records = []
    for name, folder in runs.items():
        model, _ = load_run_model(folder)
        sizes = layers_by_resolution(model)
        # The predicted class depends on the model and the patient only, so one forward pass serves every layer and weighting.
        predicted = {}
        for patient_id, (volume, _) in inputs.items():
            probability = float(np.asarray(model(volume[None], training=False)).reshape(-1)[0])
            predicted[patient_id] = "methylated" if probability >= threshold else "unmethylated"
        for layer, weighting, target in itertools.product(layers or list(sizes), weightings, ("predicted", *TARGETS)):
            head_shares, volume_shares = [], []
            for patient_id, (volume, masks) in inputs.items():
                explained = predicted[patient_id] if target == "predicted" else target
                head = heads[patient_id]
                result = compute_grad_cam(model, volume, layer, explained, region=head, weighting=weighting)
                head_shares.append({**cam_mass_fraction(result["map"], masks[0], within=head), "outside_head": result["outside_fraction"]})
                volume_shares.append(cam_mass_fraction(compute_grad_cam(model, volume, layer, explained, weighting=weighting)["map"], masks[0]))
            method = f"{WEIGHTING_NAMES[weighting]} {layer} {sizes.get(layer, '')}"
            records.append(summarise_shares(name, method, target, "head", head_shares))
            records.append(summarise_shares(name, method, target, "volume", volume_shares))
        shares = [input_gradient_share(model, volume, masks[0], heads[patient_id]) for patient_id, (volume, masks) in inputs.items()]
        records.append(summarise_shares(name, "|input gradient x input|", "absolute", "head", shares))
    return pd.DataFrame(records)


def summarise_shares(model_name: str, method: str, target: str, reference: str, shares: list) -> dict:
    "Return one table row: mean shares, mean and median enrichment, the share of maps above chance, zero maps and the mean share outside the head."
    frame = pd.DataFrame(shares)
    return {
        "model": model_name, "map": method, "target": target, "within": reference,
        "mass_fraction": frame.mass_fraction.mean(), "volume_fraction": frame.volume_fraction.mean(),
        "enrichment_mean": frame.enrichment.mean(), "enrichment_median": frame.enrichment.median(),
        "above_1": float((frame.enrichment > 1).mean()), "zero_maps": int(frame.mass_fraction.isna().sum()),
        "outside_head": frame["outside_head"].mean() if "outside_head" in frame else float("nan"),
    }


def summarise_by_class(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    "Return the enrichment of part 1 per class predicted at `threshold` and over all patients: count, mean, median and the share above 1."
    predicted = np.where(table.probability >= threshold, "methylated", "unmethylated")
    rows = []
    for name, group in [*table.groupby(predicted), ("all", table)]:
        rows.append({
            "predicted class": name, "patients": len(group), "enrichment_mean": group.enrichment.mean(),
            "enrichment_median": group.enrichment.median(), "above_1": float((group.enrichment > 1).mean()),
            "outside_head": group.outside_head.mean(),
        })
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    from mgmt_nb.core import SYNTHETIC_NOTE, setup_logging
    from mgmt_nb.gradcam import WEIGHTINGS, save_gradcam_montages

    setup_logging(logging.WARNING)
    print(SYNTHETIC_NOTE)
    run_dir = choose_run(arguments)
    check_layers(run_dir, arguments.layer or [])
    params = json.loads((run_dir / "params.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text()).get("cohorts", {})
    for cohort, values in metrics.items():
        print(
            f"run {run_dir}: {params['arch']} on {'+'.join(params['sequences'])} at {params['image_size']}x{params['image_size']}x{params['depth']}, "
            f"{cohort} AUC {values['auc']:.2f} [{values['auc_low']:.2f}, {values['auc_high']:.2f}], n={values['n']}"
        )
    threshold = float(metrics.get(arguments.cohort, {}).get("threshold", 0.5))
    predictions = pd.read_csv(run_dir / f"predictions_{arguments.cohort}.csv", dtype={"patient_id": str})
    patients = list(predictions.patient_id.head(arguments.n_patients))
    cohort_root = Path(params["external_dir"] if arguments.cohort == "external" else params["data_dir"])
    if (cohort_root / "labels.csv").is_file():  # the NIfTI layout stores the generator's volumes, calibrated
        difference = check_alignment(cohort_root, patients[0])
        print(f"alignment: FLAIR regenerated with make_patient differs from the NIfTI file of {patients[0]} by at most {difference:.1e} of its maximum")

    if arguments.shortcut_only:
        size = (params["image_size"], params["image_size"], params["depth"])
        print_table(f"4. Shortcut check over the whole {arguments.cohort} cohort (SYNTHETIC):", shortcut_check(cohort_root, params["sequences"], size))
        print(SYNTHETIC_NOTE)
        return

    output = arguments.work_dir / "gradcam"
    table = save_gradcam_montages(run_dir, patients, cohort=arguments.cohort, output_dir=output)
    columns = ["patient_id", "MGMT_value", "probability", "target", "mass_fraction", "volume_fraction", "enrichment", "outside_head"]
    first = table.iloc[0]
    print_table(f"1. Default map ({first.weighting}, {first.target}) at layer {first.layer} inside the head, SYNTHETIC phantom patients (montages in {output}):", table[columns])
    print_table("1b. Enrichment of those maps per predicted class (SYNTHETIC):", summarise_by_class(table, threshold))

    runs = {"trained": run_dir}
    if not arguments.no_control:
        runs["random weights"] = control_run(run_dir, arguments.work_dir)
    sweep = layer_sweep(runs, patients, cohort_root, params, threshold, arguments.layer, arguments.weighting or WEIGHTINGS)
    print_table(f"2-3. Mean over {len(patients)} SYNTHETIC phantom patients: share of the map inside the tumour (mass_fraction) vs the tumour's share of the volume:", sweep)

    print_table(f"4. Shortcut check over the whole {arguments.cohort} cohort (SYNTHETIC):", shortcut_check(cohort_root, params["sequences"], (params["image_size"], params["image_size"], params["depth"])))
    print(SYNTHETIC_NOTE)


if __name__ == "__main__":
    main()
