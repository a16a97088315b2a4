#!/usr/bin/env python
"""Score trained phantom runs on a fresh external cohort drawn with another seed.

Every run of a sweep scores the same external patients, so their external AUCs share that cohort's
draw: a nuisance variable that happens to relate to the label in those patients moves all of them
alike. This script generates a new NIfTI phantom cohort (`--seed`, `--n-patients`, the runs' planted
signal), scores each run's best weights on it and prints each AUC with its 95% bootstrap interval
next to the run's own external AUC. A model whose AUC differs between the two cohorts by more
than the intervals allow depends on the cohort draw, not only on what it learned.

With `--layout-check`, it also writes the run's validation patients as NIfTI on the generator's
grid and scores them there. These are the same patients in both layouts. A difference from the
DICOM validation AUC therefore comes from the layout (slice thickness, acquisition plane,
rescaling), not from the patients.

All figures come from a synthetic phantom cohort and carry no information about MGMT biology.

Example (about 5 min on 2 shared CPU cores with --layout-check, generation included):
    python tools/phantom_fresh_cohort.py runs/sweep_e20_v5/resnet18-*-seed42 --seed 7 --n-patients 80
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="training runs on the phantom (folders with params.json and best.weights.h5)")
    parser.add_argument("--seed", type=int, default=7, help="generation seed of the fresh cohort, one the runs' cohorts were not generated with (default: %(default)s)")
    parser.add_argument("--n-patients", type=int, default=80, help="patients of the fresh cohort, half of them methylated (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/mgmt_nb_fresh_cohort"), help="folder for the generated cohorts, reused when present (default: %(default)s)")
    parser.add_argument("--layout-check", action="store_true", help="also score the validation patients written as NIfTI")
    parser.add_argument("--output", type=Path, help="CSV file that receives one row per run with the AUCs and their interval bounds")
    arguments = parser.parse_args(argv)
    if arguments.n_patients < 2:
        parser.error(f"--n-patients must be at least 2 (one patient per label), got {arguments.n_patients}")
    if arguments.output is not None:
        # Created at the start, so that a missing folder does not fail the run after the scoring.
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
    return arguments


def read_run(run_dir: Path) -> dict:
    "Return a run's params.json, after checking that the run was trained on a phantom cohort and has its weights."
    from mgmt_nb.core import phantom_info

    params_path = run_dir / "params.json"
    missing = [name for name in ("params.json", "best.weights.h5") if not (run_dir / name).is_file()]
    if missing:
        raise SystemExit(f"{run_dir} has no {' or '.join(missing)}. Pass the folder of a finished training run.")
    params = json.loads(params_path.read_text())
    if phantom_info(params.get("data_dir") or "") is None:
        raise SystemExit(f"{run_dir} was not trained on a phantom cohort, so no fresh cohort of the same kind can be drawn.")
    return params


# Preprocessed inputs by (cohort folder, patient, sequences, size), shared by the runs scored on one cohort. It is never
# emptied: 200 patients of one sequence at 48x48x24 take 44 MB, and at 128x128x64 about 850 MB.
_INPUTS: dict = {}


def score(run_dir: Path, params: dict, root: Path, patients=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    "Return (labels, probabilities, patient ids) of the run's model on the cohort at `root`, optionally for the listed patients only."
    from mgmt_nb.dataloader import cohort_table
    from mgmt_nb.gradcam import load_patient_inputs, load_run_model

    model, _ = load_run_model(run_dir)
    size = (int(params["image_size"]), int(params["image_size"]), int(params["depth"]))
    table = cohort_table(root, sequences=params["sequences"])
    if patients is not None:
        table = table.set_index("patient_id", drop=False).loc[list(patients)]
    probabilities = []
    for _, row in table.iterrows():
        key = (str(root), str(row["patient_id"]), tuple(params["sequences"]), size)
        if key not in _INPUTS:
            _INPUTS[key] = load_patient_inputs(row, root, params["sequences"], size)[0]
        volume = _INPUTS[key]
        probabilities.append(float(np.asarray(model(volume[None], training=False)).reshape(-1)[0]))
    return table["MGMT_value"].astype(int).to_numpy(), np.array(probabilities), table["patient_id"].astype(str).to_numpy()


def fresh_cohort(work_dir: Path, params: dict, seed: int, n_patients: int) -> Path:
    "Generate (or reuse) a NIfTI phantom cohort with the runs' planted signal and return its folder."
    from mgmt_nb.core import phantom_info
    from mgmt_nb.phantom import PHANTOM_VERSION, make_phantom_cohort

    signal = float(params["phantom_signal"])
    root = work_dir / f"nifti_seed{seed}_n{n_patients}_signal{signal:g}_v{PHANTOM_VERSION}"
    if phantom_info(root) is None:
        if root.exists():  # an interrupted generation leaves no marker file
            raise SystemExit(f"{root} exists without a finished phantom marker file. Delete it and run again.")
        make_phantom_cohort(root, layout="nifti", n_patients=n_patients, signal=signal, seed=seed, workers=1)
    return root


def validation_as_nifti(work_dir: Path, run_dir: Path, params: dict) -> tuple[Path, list]:
    "Write the run's validation patients as NIfTI on the generator's grid and return (folder, patient ids)."
    from mgmt_nb.core import phantom_info
    from mgmt_nb.phantom import _generate_patient

    info = phantom_info(params["data_dir"])
    predictions = pd.read_csv(run_dir / "predictions_validation.csv", dtype={"patient_id": str})
    root = work_dir / f"validation_as_nifti_{Path(params['data_dir']).parent.name}_seed{params['seed']}"
    if not (root / "labels.csv").is_file():
        root.mkdir(parents=True, exist_ok=True)
        for patient_id, label in zip(predictions.patient_id, predictions.MGMT_value):
            _generate_patient(
                "nifti", root, patient_id, int(info["patient_index"][patient_id]), int(label), float(info["signal"]),
                int(info["seed"]), tuple(info["sequences"]), int(info["spacing_mm"]),
            )
        predictions[["patient_id", "MGMT_value"]].to_csv(root / "labels.csv", index=False)  # written last: marks a finished folder
    return root, list(predictions.patient_id)


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    from mgmt_nb.core import SYNTHETIC_NOTE
    from mgmt_nb.evaluate import auc_ci, format_auc

    print(SYNTHETIC_NOTE)
    runs = {run_dir: read_run(run_dir) for run_dir in arguments.run_dirs}
    signals = {float(params["phantom_signal"]) for params in runs.values()}
    if len(signals) != 1:
        raise SystemExit(f"the runs were trained with different planted signals {sorted(signals)}. Pass runs of one sweep.")
    from mgmt_nb.core import phantom_info

    used_seeds = {int(phantom_info(params["external_dir"] or params["data_dir"])["seed"]) for params in runs.values()}
    if arguments.seed in used_seeds:
        raise SystemExit(f"--seed {arguments.seed} generated the runs' own cohorts, so it would redraw their external patients. Pass another seed.")
    root = fresh_cohort(arguments.work_dir, next(iter(runs.values())), arguments.seed, arguments.n_patients)
    rows, records = [], []
    for run_dir, params in runs.items():
        metrics = json.loads((run_dir / "metrics.json").read_text()).get("cohorts", {})
        labels, probabilities, _ = score(run_dir, params, root)
        auc, low, high = auc_ci(labels, probabilities)
        records.append({
            "run": run_dir.name, "seq": "+".join(params["sequences"]), "seed": params["seed"], "signal": params["phantom_signal"],
            **{f"external_{key}": metrics.get("external", {}).get(key) for key in ("auc", "auc_low", "auc_high")},
            "fresh_seed": arguments.seed, "fresh_n": len(labels), "fresh_auc": auc, "fresh_auc_low": low, "fresh_auc_high": high,
        })
        row = {
            "run": run_dir.name, "validation (DICOM)": format_auc(metrics["validation"]) if "validation" in metrics else "n/a",
            "external": format_auc(metrics["external"]) if "external" in metrics else "n/a",
            f"fresh cohort, seed {arguments.seed}, n={len(labels)}": format_auc({"auc": auc, "auc_low": low, "auc_high": high}),
        }
        if arguments.layout_check:
            nifti_root, patients = validation_as_nifti(arguments.work_dir, run_dir, params)
            labels, probabilities, _ = score(run_dir, params, nifti_root, patients)
            auc, low, high = auc_ci(labels, probabilities)
            row["validation patients as NIfTI"] = format_auc({"auc": auc, "auc_low": low, "auc_high": high})
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
        if arguments.output is not None:  # rewritten after each run, so an interrupted scoring keeps what it measured
            pd.DataFrame(records).assign(synthetic=True).to_csv(arguments.output, index=False)
    print("\nROC AUC [95% stratified percentile bootstrap, 2000 resamples], SYNTHETIC phantom cohorts:")
    print(pd.DataFrame(rows).to_string(index=False))
    print(SYNTHETIC_NOTE)


if __name__ == "__main__":
    main()
