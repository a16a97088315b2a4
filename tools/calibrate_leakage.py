#!/usr/bin/env python
"""Measure the scores of planted duplicates against all other pairs, to set IMAGE_THRESHOLDS of mgmt_nb.leakage.

SYNTHETIC DATA. For each seed the script builds (or reuses from the cache)
`phantom_cohorts(n_train, n_external, planted_duplicates, seed)`, preprocesses every volume to
--size through the volume cache, and runs the image audit with thresholds that flag nothing. It
prints, per seed and sequence, the lowest residual NCC and NMI of a planted duplicate and the
highest of any other pair. The NCC of other pairs is taken over all pairs, their NMI over the
top-k candidates, the only pairs that get one.

The last table proposes thresholds from the --fit seeds: midway between the lowest duplicate
score and the highest other score over those seeds, rounded down to two decimals. The --check
seeds are then flagged with those thresholds, and recall and false positives are printed. The
scores come from synthetic patients that share one anatomical template and are no estimate for
real scans.

Example: python tools/calibrate_leakage.py --fit 0 1 --check 2
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd

SEQUENCES = ["FLAIR", "T1w", "T1wCE", "T2w"]


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit", type=int, nargs="+", default=[0, 1], help="seeds whose scores set the thresholds (default 0 1)")
    parser.add_argument("--check", type=int, nargs="*", default=[2], help="seeds flagged with the proposed thresholds (default 2)")
    parser.add_argument("--train", type=int, default=60, help="training patients per cohort pair (default 60)")
    parser.add_argument("--external", type=int, default=30, help="external patients per cohort pair (default 30)")
    parser.add_argument("--planted", type=int, default=5, help="planted duplicates per cohort pair (default 5)")
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 32], help="preprocessing size x y z (default 64 64 32, the training size)")
    parser.add_argument("--cache", type=Path, default=None, help="volume cache folder (default: a temporary folder)")
    return parser.parse_args(argv)


def seed_scores(seed: int, arguments, cache_root: Path) -> tuple[dict, dict]:
    "Return ({sequence: similarity table}, {sequence: candidate table}) with a `planted` column, for one seed."
    from mgmt_nb.dataloader import cohort_table, prepare_volumes
    from mgmt_nb.leakage import audit_sequences
    from mgmt_nb.phantom import phantom_cohorts, phantom_info

    train_root, external_root = phantom_cohorts(
        n_train=arguments.train, n_external=arguments.external, planted_duplicates=arguments.planted, seed=seed, progress=False,
    )
    planted = phantom_info(external_root)["planted_duplicates"]
    train_table, external_table = cohort_table(train_root), cohort_table(external_root)
    size = tuple(arguments.size)
    train_paths, external_paths = {}, {}
    for sequence in SEQUENCES:
        train_ready, _ = prepare_volumes(train_table, sequence, size, cache_root, progress=False)
        external_ready, _ = prepare_volumes(external_table, sequence, size, cache_root, progress=False)
        train_paths[sequence] = dict(zip(train_ready["patient_id"], train_ready["path"]))
        external_paths[sequence] = dict(zip(external_ready["patient_id"], external_ready["path"]))
    flag_nothing = {sequence: {"ncc": 1.0, "nmi": 1.0} for sequence in SEQUENCES}
    results = audit_sequences(train_paths, external_paths, thresholds=flag_nothing, progress=False, synthetic=True)
    similarity, candidates = {}, {}
    for sequence, result in results.items():
        for name, table in (("similarity", result["similarity"]), ("candidates", result["candidates"])):
            table = table.copy()
            table["planted"] = [planted.get(e) == t for e, t in zip(table["external_id"], table["train_id"])]
            (similarity if name == "similarity" else candidates)[sequence] = table
    missing = {sequence: int(len(planted) - candidates[sequence]["planted"].sum()) for sequence in SEQUENCES}
    if any(missing.values()):
        print(f"seed {seed}: planted duplicates outside the top-k candidates, per sequence: {missing}")
    return similarity, candidates


def extremes(similarity: pd.DataFrame, candidates: pd.DataFrame) -> dict:
    "Lowest duplicate and highest other score for NCC and NMI."
    return {
        "ncc_planted_min": similarity.loc[similarity.planted, "ncc"].min(),
        "ncc_other_max": similarity.loc[~similarity.planted, "ncc"].max(),
        "nmi_planted_min": candidates.loc[candidates.planted, "nmi"].min(),
        "nmi_other_max": candidates.loc[~candidates.planted, "nmi"].max(),
    }


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    print("SYNTHETIC DATA: phantom cohorts with planted re-acquisitions; the scores are no estimate for real scans.")
    print(f"command: python tools/calibrate_leakage.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    with tempfile.TemporaryDirectory(prefix="mgmt_nb_calibrate_") as scratch:
        cache_root = arguments.cache or Path(scratch)
        scores = {seed: seed_scores(seed, arguments, cache_root) for seed in dict.fromkeys(arguments.fit + arguments.check)}

    rows = []
    for seed, (similarity, candidates) in scores.items():
        for sequence in SEQUENCES:
            rows.append({"seed": seed, "sequence": sequence, **extremes(similarity[sequence], candidates[sequence])})
    table = pd.DataFrame(rows)
    print("\nper seed (residual NCC over all pairs, NMI over the top-k candidates):")
    print(table.round(3).to_string(index=False))

    fit = table[table.seed.isin(arguments.fit)].groupby("sequence", sort=False)
    proposed = {}
    for sequence, group in fit:
        proposed[sequence] = {
            metric: math.floor(50 * (group[f"{metric}_planted_min"].min() + group[f"{metric}_other_max"].max())) / 100
            for metric in ("ncc", "nmi")
        }
    print(f"\nproposed thresholds from seeds {arguments.fit} (midway, rounded down):")
    for sequence, values in proposed.items():
        group = fit.get_group(sequence)
        print(
            f"  {sequence:6s} ncc {values['ncc']:.2f} (duplicates >= {group.ncc_planted_min.min():.3f}, others <= {group.ncc_other_max.max():.3f}), "
            f"nmi {values['nmi']:.2f} (duplicates >= {group.nmi_planted_min.min():.3f}, others <= {group.nmi_other_max.max():.3f})"
        )

    for seed in arguments.check:
        similarity, candidates = scores[seed]
        for sequence in SEQUENCES:
            table = candidates[sequence]
            flags = (table.ncc >= proposed[sequence]["ncc"]) & (table.nmi >= proposed[sequence]["nmi"])
            found, false_positives = int((flags & table.planted).sum()), int((flags & ~table.planted).sum())
            print(f"check seed {seed} {sequence:6s}: {found} of {arguments.planted} planted duplicates flagged, {false_positives} other pairs flagged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
