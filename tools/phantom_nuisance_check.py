#!/usr/bin/env python
"""Check which whole-volume properties of a cohort relate to its labels and to trained runs' scores.

A model trained on a small cohort can respond to a property that relates to the label in that
cohort by chance, such as the share of the volume inside the head. On another cohort the same
property relates to the label by that cohort's own chance. So every model that responds to it
moves the same way there, and their intervals are not independent checks. For one cohort folder
and some training runs, the script prints three tables. The first gives, per sequence, the AUC
against the label of three properties of the preprocessed model input: the share of voxels above
the volume's minimum (the head), their mean, and their 99th percentile. The second gives each
run's AUC with its 95% bootstrap interval. The third gives the Spearman correlation of each run's
probabilities with each property of its sequence.

With no planted signal, the labels cannot act on the images, so any property's AUC differs from
0.5 by chance only. All figures from a phantom cohort are synthetic and carry no information about
MGMT biology.

Example (9 min for 8 runs on 200 patients, on 2 CPU cores shared with a test run):
    python tools/phantom_nuisance_check.py /tmp/mgmt_nb_fresh_cohort/nifti_seed2026_n200_signal0_v4 \\
        runs/sweep_e20_v5_auc_nosignal/resnet18-*-seed2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantom_fresh_cohort import _INPUTS, read_run, score  # noqa: E402  (the scoring and its input cache are shared)

PROPERTIES = ("head share", "mean", "p99")  # properties of each preprocessed model input, one channel


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cohort", type=Path, help="cohort folder that the runs are scored on, such as one written by phantom_fresh_cohort.py")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="single-sequence training runs (folders with params.json and best.weights.h5)")
    return parser.parse_args(argv)


def volume_properties(volume: np.ndarray) -> dict:
    "Return the PROPERTIES of one preprocessed single-channel model input (x, y, z, 1)."
    values = volume[..., 0]
    head = values > values.min()
    inside = values[head] if head.any() else values.ravel()
    return {"head share": float(head.mean()), "mean": float(inside.mean()), "p99": float(np.percentile(inside, 99))}


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    from mgmt_nb.core import SYNTHETIC_NOTE, MGMTDataError
    from mgmt_nb.evaluate import auc_ci, format_auc

    if not arguments.cohort.exists():
        raise SystemExit(f"{arguments.cohort}: cohort folder not found. Pass a folder that cohort_table reads.")
    if not arguments.cohort.is_dir():
        raise SystemExit(f"{arguments.cohort} is a file, not a cohort folder. Pass a folder that cohort_table reads.")
    runs = {run_dir: read_run(run_dir) for run_dir in arguments.run_dirs}
    several = [run_dir.name for run_dir, params in runs.items() if len(params["sequences"]) != 1]
    if several:
        raise SystemExit(f"runs with several sequences are not supported: {', '.join(several)}. Pass single-sequence runs.")
    print(SYNTHETIC_NOTE)

    scores, labels, patient_ids, properties = {}, None, None, {}
    for run_dir, params in runs.items():
        try:
            run_labels, probabilities, run_ids = score(run_dir, params, arguments.cohort)
        except MGMTDataError as error:  # its message names the file and the fix, for example for a folder in no known layout
            raise SystemExit(str(error)) from None
        if patient_ids is None:
            labels, patient_ids = run_labels, run_ids
        if not np.array_equal(patient_ids, run_ids):
            raise SystemExit(f"{run_dir.name} scored the patients in another order. Pass runs that read the cohort alike.")
        sequence = params["sequences"][0]
        size = (int(params["image_size"]), int(params["image_size"]), int(params["depth"]))
        scores[run_dir.name] = ((sequence, size), probabilities)
        if (sequence, size) not in properties:
            inputs = [_INPUTS[(str(arguments.cohort), patient_id, (sequence,), size)] for patient_id in patient_ids]
            properties[(sequence, size)] = pd.DataFrame([volume_properties(volume) for volume in inputs])

    rows = [
        {"sequence": sequence, "size": "x".join(map(str, size)), **{name: round(roc_auc_score(labels, table[name]), 3) for name in PROPERTIES}}
        for (sequence, size), table in properties.items()
    ]
    print(f"\nAUC of each property against the label ({len(labels)} patients, {int(labels.sum())} methylated):")
    print(pd.DataFrame(rows).to_string(index=False))

    run_rows, correlation_rows = [], []
    for name, (key, probabilities) in scores.items():
        auc, low, high = auc_ci(labels, probabilities)
        run_rows.append({"run": name, "AUC [95% CI]": format_auc({"auc": auc, "auc_low": low, "auc_high": high})})
        table = properties[key]
        correlation_rows.append({"run": name, **{prop: round(float(spearmanr(probabilities, table[prop])[0]), 2) for prop in PROPERTIES}})
    print("\nAUC of each run on this cohort [95% stratified percentile bootstrap, 2000 resamples]:")
    print(pd.DataFrame(run_rows).to_string(index=False))
    print("\nSpearman correlation of each run's probabilities with the properties of its sequence:")
    print(pd.DataFrame(correlation_rows).to_string(index=False))
    print(SYNTHETIC_NOTE)


if __name__ == "__main__":
    main()
