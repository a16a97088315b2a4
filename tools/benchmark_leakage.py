#!/usr/bin/env python
"""Time the vectorised image audit of mgmt_nb.leakage against the per-pair reference, and compare their flags.

SYNTHETIC DATA. Every volume comes from the phantom of mgmt_nb.phantom: phantom patients (all four
sequences on a 2 mm grid by default), each warped with `vary_anatomy` so that it has anatomy of its
own, then preprocessed with `preprocess_volume` to --size. With --bases 0 every synthetic patient
has its own phantom patient. With --bases N, N phantom patients are made and every synthetic
patient is a warp of one of them, so several patients share one tumour. The external cohort
contains three kinds of patients:

- re-acquired copies: `simulate_reacquisition` of a training patient before preprocessing (rotated
  by up to 3 degrees per axis, shifted by up to 2 voxels, another gain, noise);
- exact-grid copies: a training patient's preprocessed volume rescaled to 0.95 v + 0.03 with
  Gaussian noise (sd 0.01), so both volumes are on one grid;
- other patients.

The script times `audit_sequences`, which runs `audit_images` for every sequence in threads as
`audit_cohorts` does, end to end (reduction, matching, NMI of the candidates), and keeps the
fastest of --repeats runs. It times the reference, which is what `pairwise_similarity` runs per
pair (`_ncc` and `_nmi` over all voxels after a per-volume check), on every planted pair plus
--sample-pairs random other pairs per sequence. Then it extrapolates the reference to all pairs
and prints the speed-up and the flags of both methods on the sampled pairs. Scores and
thresholds printed here come from synthetic data and are no estimate for real scans.

Example: python tools/benchmark_leakage.py --train 60 --external 30 --size 128x128x64
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np
import pandas as pd


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 1.")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} must be an integer >= 0.")
    return int(text)


def parse_shape(text: str) -> tuple[int, int, int]:
    "Parse XxYxZ into three positive voxel counts."
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"shape {text!r} must be XxYxZ with 3 positive integers, e.g. 128x128x64.")
    return tuple(int(part) for part in parts)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=positive_int, default=60, help="training patients (default 60)")
    parser.add_argument("--external", type=positive_int, default=30, help="external patients, planted copies included (default 30)")
    parser.add_argument("--reacquired", type=non_negative_int, default=4, help="external patients that are re-acquired copies of training patients (default 4)")
    parser.add_argument("--exact", type=non_negative_int, default=2, help="external patients that are exact-grid copies of training patients (default 2)")
    parser.add_argument("--bases", type=non_negative_int, default=0, help="phantom patients to warp into all synthetic patients; 0 = one per patient (default 0)")
    parser.add_argument("--size", type=parse_shape, default=(128, 128, 64), help="preprocessing size XxYxZ in voxels (default 128x128x64)")
    parser.add_argument("--spacing", type=positive_int, default=2, help="phantom grid spacing in mm (default 2)")
    parser.add_argument("--sample-pairs", type=non_negative_int, default=12, help="random other pairs per sequence timed with the reference (default 12)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the phantom, the warps and the sampling (default 0)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="runs of the vectorised audit; the fastest is reported (default 5)")
    arguments = parser.parse_args(argv)
    if arguments.reacquired + arguments.exact > min(arguments.train, arguments.external):
        parser.error("--reacquired plus --exact must not exceed --train or --external.")
    return arguments


def make_cohorts(arguments, sequences) -> tuple[dict, dict, dict]:
    "Return (train, external, planted) where train/external map sequence -> {id: volume} and planted maps external id -> (train id, kind)."
    from mgmt_nb.data import preprocess_volume
    from mgmt_nb.leakage import simulate_reacquisition, vary_anatomy
    from mgmt_nb.phantom import make_patient

    n_copies = arguments.reacquired + arguments.exact
    n_patients = arguments.train + arguments.external - n_copies
    n_bases = arguments.bases or n_patients
    bases = [
        {name: volume.data for name, volume in make_patient(index, index % 2, 0.8, arguments.seed, sequences=sequences, spacing_mm=arguments.spacing)[0].items()}
        for index in range(n_bases)
    ]
    displacement, smoothness = 12.0 / arguments.spacing, 16.0 / arguments.spacing  # 12 mm and 16 mm

    train = {name: {} for name in sequences}
    external = {name: {} for name in sequences}
    planted = {}
    rng = np.random.default_rng(arguments.seed)
    for patient in range(n_patients):
        warp_seed = arguments.seed * 1_000_000 + patient
        heads = {name: vary_anatomy(bases[patient % n_bases][name], seed=warp_seed, max_displacement=displacement, smoothness=smoothness) for name in sequences}
        if patient < arguments.train:
            train_id = f"T{patient:03d}"
            for name in sequences:
                train[name][train_id] = preprocess_volume(heads[name], arguments.size)
            if patient < arguments.reacquired:
                external_id = f"R{patient:03d}"
                planted[external_id] = (train_id, "re-acquired copy")
                for name in sequences:
                    copy = simulate_reacquisition(heads[name], seed=warp_seed + 500_000)
                    external[name][external_id] = preprocess_volume(copy, arguments.size)
            elif patient < n_copies:
                external_id = f"X{patient:03d}"
                planted[external_id] = (train_id, "exact-grid copy")
                for name in sequences:
                    noise = rng.normal(0.0, 0.01, arguments.size)
                    external[name][external_id] = np.clip(0.95 * train[name][train_id] + 0.03 + noise, 0.0, 1.0).astype(np.float32)
        else:
            for name in sequences:
                external[name][f"E{patient:03d}"] = preprocess_volume(heads[name], arguments.size)
    return train, external, planted


def time_reference(train: dict, external: dict, pairs: list[tuple[str, str]]) -> tuple[pd.DataFrame, float, float]:
    "Score `pairs` as pairwise_similarity does; return (scores, seconds per volume check, seconds per pair)."
    from mgmt_nb.leakage import _ncc, _nmi, _prepare_cohort

    train_ids = sorted({train_id for _, train_id in pairs})
    external_ids = sorted({external_id for external_id, _ in pairs})
    started = time.perf_counter()
    prepared_train, shape = _prepare_cohort({key: train[key] for key in train_ids}, "train", None)
    prepared_external, _ = _prepare_cohort({key: external[key] for key in external_ids}, "external", shape)
    per_volume = (time.perf_counter() - started) / (len(train_ids) + len(external_ids))

    rows = []
    started = time.perf_counter()
    for external_id, train_id in pairs:
        a, b = prepared_external[external_id], prepared_train[train_id]
        rows.append({"external_id": external_id, "train_id": train_id, "ncc": _ncc(a, b), "nmi": _nmi(a, b, 32)})
    per_pair = (time.perf_counter() - started) / len(pairs)
    return pd.DataFrame(rows), per_volume, per_pair


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from mgmt_nb.core import SEQUENCES
    from mgmt_nb.leakage import audit_images, audit_sequences, flag_pairs, reduce_volume

    sequences = list(SEQUENCES)
    print("SYNTHETIC DATA: phantom volumes warped with vary_anatomy; the scores are no estimate for real scans.")
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, NumPy {np.__version__}")

    started = time.perf_counter()
    train, external, planted = make_cohorts(arguments, sequences)
    n_train, n_external = len(train[sequences[0]]), len(external[sequences[0]])
    bases = arguments.bases or "one per patient"
    print(
        f"cohorts: {n_train} training x {n_external} external patients x {len(sequences)} sequences at {arguments.size}, "
        f"phantom bases: {bases}, made in {time.perf_counter() - started:.1f} s"
    )
    print(f"planted: {arguments.reacquired} re-acquired copies, {arguments.exact} exact-grid copies; the other external patients are different patients")

    # Vectorised audit, end to end, all sequences at once as audit_cohorts runs them. The best of
    # --repeats runs is kept, as timeit does: the first run also pays for thread start-up and warm caches.
    times = []
    for _ in range(arguments.repeats):
        started = time.perf_counter()
        results = audit_sequences(train, external, progress=False)
        times.append(time.perf_counter() - started)
    vectorised_s = min(times)
    started = time.perf_counter()
    for name in sequences:
        for volume in (*train[name].values(), *external[name].values()):
            reduce_volume(volume)
    reduce_s = time.perf_counter() - started

    # Score distributions: planted pairs against every other pair.
    print("\nscores of the vectorised audit (residual NCC over all pairs, NMI over the top-5 candidates):")
    print(f"{'sequence':9s} {'copies NCC min':>15s} {'others NCC max':>15s} {'copies NMI min':>15s} {'others NMI max':>15s} {'flagged pairs':>14s} {'planted found':>14s}")
    for name in sequences:
        similarity, candidates = results[name]["similarity"], results[name]["candidates"]
        is_planted = lambda table: [planted.get(e, (None,))[0] == t for e, t in zip(table.external_id, table.train_id)]
        similarity_planted = np.array(is_planted(similarity), dtype=bool)
        candidate_planted = np.array(is_planted(candidates), dtype=bool)
        flagged = candidates[candidates.flagged]
        found = int(np.sum(is_planted(flagged)))
        print(
            f"{name:9s} {similarity.ncc[similarity_planted].min():15.3f} {similarity.ncc[~similarity_planted].max():15.3f} "
            f"{candidates.nmi[candidate_planted].min():15.3f} {candidates.nmi[~candidate_planted].max():15.3f} "
            f"{len(flagged):14d} {found:>10d} of {len(planted)}"
        )

    # Reference on sampled pairs.
    rng = np.random.default_rng(arguments.seed + 1)
    reference_rows, per_volume, per_pair = [], [], []
    for name in sequences:
        pairs = [(external_id, train_id) for external_id, (train_id, _) in planted.items()]
        external_ids, train_ids = list(external[name]), list(train[name])
        while len(pairs) < len(planted) + arguments.sample_pairs:
            pair = (external_ids[rng.integers(len(external_ids))], train_ids[rng.integers(len(train_ids))])
            if planted.get(pair[0], (None,))[0] != pair[1] and pair not in pairs:
                pairs.append(pair)
        scores, volume_s, pair_s = time_reference(train[name], external[name], pairs)
        per_volume.append(volume_s)
        per_pair.append(pair_s)
        scores["sequence"] = name
        reference_rows.append(scores)
    reference = pd.concat(reference_rows, ignore_index=True)
    reference_flags = set(flag_pairs(reference)[["sequence", "external_id", "train_id"]].itertuples(index=False, name=None))
    vectorised_flags = set()
    for name in sequences:
        flagged = results[name]["flagged"]
        vectorised_flags |= {(name, e, t) for e, t in zip(flagged.external_id, flagged.train_id)}

    n_pairs = n_train * n_external * len(sequences)
    n_volumes = (n_train + n_external) * len(sequences)
    reference_estimate = float(np.mean(per_volume)) * n_volumes + float(np.mean(per_pair)) * n_pairs
    print(f"\nreference: {np.mean(per_pair) * 1000:.1f} ms per pair and {np.mean(per_volume) * 1000:.1f} ms per volume check, measured on {len(reference)} sampled pairs")
    print(f"reference, extrapolated to all {n_pairs} pairs: {reference_estimate:.0f} s (estimate)")
    print(
        f"vectorised audit, all {n_pairs} pairs, measured: {vectorised_s:.2f} s (fastest of {arguments.repeats}: "
        f"{', '.join(f'{t:.2f}' for t in times)} s); reducing the {n_volumes} volumes alone, timed again: {reduce_s:.2f} s"
    )
    print(f"speed-up: {reference_estimate / vectorised_s:.0f}x")

    # Estimate for the thesis' cohort sizes, 262 external x 585 training patients. The reduction cost per
    # volume comes from above. The part that grows with the number of pairs is timed here on stand-in
    # volumes at the signature grid: shifted, noisy copies of this run's reduced volumes, for timing only.
    thesis_external, thesis_train = 262, 585
    pool = [reduce_volume(volume) for volume in train[sequences[0]].values()]
    stand_in = lambda index: np.clip(
        np.roll(pool[index % len(pool)], tuple(rng.integers(-2, 3, 3)), axis=(0, 1, 2)) + rng.normal(0, 0.02, pool[0].shape), 0, 1
    ).astype(np.float32)
    large_train = {f"T{index}": stand_in(index) for index in range(thesis_train)}
    large_external = {f"E{index}": stand_in(index + 7) for index in range(thesis_external)}
    started = time.perf_counter()
    audit_images(large_train, large_external, sequences[0], progress=False)
    large_s = time.perf_counter() - started
    thesis_volumes, thesis_pairs = (thesis_external + thesis_train) * len(sequences), thesis_external * thesis_train * len(sequences)
    thesis_vectorised = reduce_s / n_volumes * thesis_volumes + large_s * len(sequences)
    thesis_reference = float(np.mean(per_volume)) * thesis_volumes + float(np.mean(per_pair)) * thesis_pairs
    print(
        f"at {thesis_external} x {thesis_train} x {len(sequences)} pairs (estimate: per-volume costs above, plus {large_s:.1f} s measured "
        f"per sequence for matching {thesis_external} x {thesis_train} stand-in volumes): reference {thesis_reference / 3600:.1f} h, "
        f"vectorised {thesis_vectorised:.0f} s, speed-up {thesis_reference / thesis_vectorised:.0f}x"
    )

    print("\nflags on the sampled pairs (reference: NCC >= 0.9 and NMI >= 0.5 over all voxels; vectorised: IMAGE_THRESHOLDS):")
    kinds = {external_id: kind for external_id, (_, kind) in planted.items()}
    reference["kind"] = [kinds.get(e) if planted.get(e, (None,))[0] == t else "different patients" for e, t in zip(reference.external_id, reference.train_id)]
    reference["flag_reference"] = [(s, e, t) in reference_flags for s, e, t in zip(reference.sequence, reference.external_id, reference.train_id)]
    reference["flag_vectorised"] = [(s, e, t) in vectorised_flags for s, e, t in zip(reference.sequence, reference.external_id, reference.train_id)]
    summary = reference.groupby("kind").agg(
        pairs=("kind", "size"), reference_flagged=("flag_reference", "sum"), vectorised_flagged=("flag_vectorised", "sum"),
        agree=("flag_reference", lambda column: int((column == reference.loc[column.index, "flag_vectorised"]).sum())),
    )
    print(summary.to_string())
    agree = int((reference.flag_reference == reference.flag_vectorised).sum())
    print(f"flags agree on {agree} of {len(reference)} sampled pairs")
    mismatched = reference[reference.flag_reference != reference.flag_vectorised]
    if len(mismatched):
        print("pairs where the flags differ (reference scores):")
        print(mismatched[["sequence", "external_id", "train_id", "kind", "ncc", "nmi", "flag_reference", "flag_vectorised"]].round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
