#!/usr/bin/env python
"""Measure how much label signal simple intensity statistics find in each sequence of the phantom cohort.

For every patient of the training and external phantom cohorts, the script preprocesses each
sequence as training does (`preprocess_volume`). It then takes eight features: the shares of brain
voxels above 0.5, 0.6, 0.7, 0.8 and 0.9, and below 0.1, 0.2 and 0.3. A logistic regression on their
logarithms, cross-validated (5 folds) within each cohort, gives an AUC for the label. A sequence
where these features reach a high AUC carries the planted signal in its intensities, whatever a
CNN learns from it. A second table fits the regression on the training cohort and scores the
external one, which shows whether the relation between intensities and label carries over from
the DICOM layout (thick slices in a random plane) to the NIfTI layout (the generator's 2 mm grid).

`--antialias` chooses the smoothing of each cropped volume before the resize: `voxels` is
`preprocess_volume`'s own (sigma = (input / output size - 1) / 2 voxels per axis, the default),
`off` is `preprocess_volume(smooth=False)`, the preprocessing before version 5, and `mm` a
Gaussian whose full width at half maximum is the output voxel size in mm, less the native voxel
size in quadrature. All figures come from a synthetic phantom cohort and carry no
information about MGMT biology.

Example (about 40 s of CPU on 2 cores, the cohorts cached):
    python tools/phantom_band_auc.py --size 48x48x24
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

UPPER_BANDS = (0.5, 0.6, 0.7, 0.8, 0.9)
LOWER_BANDS = (0.1, 0.2, 0.3)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="48x48x24", help="preprocessing size XxYxZ in voxels (default 48x48x24)")
    parser.add_argument("--train", type=int, default=120, help="phantom training patients (default 120, as the training notebook)")
    parser.add_argument("--external", type=int, default=40, help="phantom external patients (default 40)")
    parser.add_argument("--signal", type=float, default=0.8, help="planted signal strength, 0 to 1 (default 0.8)")
    parser.add_argument("--seed", type=int, default=42, help="phantom seed (default 42, as the training notebook)")
    parser.add_argument("--antialias", choices=("voxels", "off", "mm"), default="voxels", help="Gaussian smoothing before the resize (default voxels, as preprocess_volume)")
    return parser.parse_args(argv)


FWHM_TO_SIGMA = 1 / (2 * np.sqrt(2 * np.log(2)))


def preprocess(volume, size: tuple, antialias: str) -> np.ndarray:
    "Return preprocess_volume's output, with the Gaussian smoothing of `antialias` between the crop and the resize."
    from scipy import ndimage

    from mgmt_nb.data import crop_dark_border, normalize_intensity, preprocess_volume, resize_volume

    if antialias in ("voxels", "off"):
        return preprocess_volume(volume, size, smooth=antialias == "voxels")
    cropped = crop_dark_border(volume.data).astype(np.float32)
    spacing = np.linalg.norm(volume.affine[:3, :3], axis=0)
    output_mm = np.array(cropped.shape) * spacing / np.array(size)
    sigma = np.sqrt(np.maximum(output_mm**2 - spacing**2, 0.0)) * FWHM_TO_SIGMA / spacing
    smoothed = ndimage.gaussian_filter(cropped, sigma, mode="nearest")
    return np.clip(resize_volume(normalize_intensity(smoothed), size), 0.0, 1.0)


def band_features(volume: np.ndarray) -> list[float]:
    "Return the shares of brain (non-zero) voxels of a preprocessed volume above each upper band and below each lower band."
    values = volume[volume > 0]
    return [float((values > t).mean()) for t in UPPER_BANDS] + [float((values < t).mean()) for t in LOWER_BANDS]


def band_auc(features: np.ndarray, labels: np.ndarray) -> float:
    "Return the 5-fold cross-validated AUC of a logistic regression on the logarithm of the features."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    scores = cross_val_predict(LogisticRegression(max_iter=3000), np.log(features + 1e-4), labels, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, scores))


def transfer_auc(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, test_labels: np.ndarray) -> float:
    "Return the AUC on the test cohort of a logistic regression on the logarithm of the features, fit on the training cohort."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    model = LogisticRegression(max_iter=3000).fit(np.log(train_features + 1e-4), train_labels)
    return float(roc_auc_score(test_labels, model.predict_proba(np.log(test_features + 1e-4))[:, 1]))


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    from mgmt_nb.core import LABEL_COLUMN, SEQUENCES, SYNTHETIC_NOTE
    from mgmt_nb.data import read_volume
    from mgmt_nb.dataloader import cohort_table
    from mgmt_nb.phantom import phantom_cohorts

    size = tuple(int(part) for part in arguments.size.lower().split("x"))
    print(SYNTHETIC_NOTE)
    roots = phantom_cohorts(n_train=arguments.train, n_external=arguments.external, signal=arguments.signal, seed=arguments.seed)
    print("cohort    sequence  patients  cross-validated AUC of the band features")
    data = {}
    for name, root in zip(("training", "external"), roots):
        table = cohort_table(root)
        labels = table[LABEL_COLUMN].astype(int).to_numpy()
        for sequence in SEQUENCES:
            features = np.array([band_features(preprocess(read_volume(path), size, arguments.antialias)) for path in table[sequence]])
            data[name, sequence] = (features, labels)
            print(f"{name:9} {sequence:9} {len(labels):8}  {band_auc(features, labels):.3f}", flush=True)
    print("\nfit on the training cohort, scored on the external cohort (AUC below 0.5: the features relate to the label the other way there)")
    for sequence in SEQUENCES:
        print(f"{sequence:9} {transfer_auc(*data['training', sequence], *data['external', sequence]):.3f}")
    print(SYNTHETIC_NOTE)


if __name__ == "__main__":
    main()
