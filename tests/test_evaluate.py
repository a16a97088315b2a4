"""Evaluation statistics checked against direct reference computations: DeLong, bootstrap, calibration, selection, ensembles."""
import contextlib
import io
import json
import logging
import math
from pathlib import Path
from unittest import mock

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mgmt_nb.core import LABEL_COLUMN, SYNTHETIC_NOTE
from mgmt_nb.evaluate import (
    auc_ci, binary_metrics, build_ensembles, delong_ci, delong_table, delong_test, ensemble_mean, external_metrics,
    load_runs, plot_forest, plot_reliability, reliability_curve, results_table, select_model, stack_predictions,
    summary_cli, write_metrics,
)


# ---------------------------------------------------------------------------------------------
# Reference implementations, written for clarity and not for speed.

def pairwise_kernel(x: float, y: float) -> float:
    "DeLong's psi: 1 when the positive outranks the negative, 0.5 for a tie, 0 otherwise."
    if x > y:
        return 1.0
    if x == y:
        return 0.5
    return 0.0


def delong_reference(labels, score_rows) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) by explicit pairwise comparisons: AUCs and their covariance matrix.

    V10[r][i] = mean over negatives j of psi(X_ri, Y_rj), V01[r][j] = mean over positives i of psi(X_ri, Y_rj),
    S10 and S01 are their sample covariances with n - 1 denominators, and Cov(AUC) = S10 / m + S01 / n.
    """
    labels = np.asarray(labels)
    positives = [list(np.asarray(row)[labels == 1]) for row in score_rows]
    negatives = [list(np.asarray(row)[labels == 0]) for row in score_rows]
    m, n, k = len(positives[0]), len(negatives[0]), len(score_rows)
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    for r in range(k):
        for i in range(m):
            for j in range(n):
                psi = pairwise_kernel(positives[r][i], negatives[r][j])
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    aucs = v10.mean(axis=1)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = sum((v10[r, i] - aucs[r]) * (v10[s, i] - aucs[s]) for i in range(m)) / (m - 1)
            s01[r, s] = sum((v01[r, j] - aucs[r]) * (v01[s, j] - aucs[s]) for j in range(n)) / (n - 1)
    return aucs, s10 / m + s01 / n


def bootstrap_reference(labels, scores, n_boot: int, seed: int, level: float) -> tuple[float, float]:
    """Stratified percentile bootstrap, one resample at a time with pairwise counting.

    It draws the same random numbers as auc_ci does for a cohort small enough to fit in one block:
    first all positive indices, shape (n_boot, n_pos), then all negative indices, shape (n_boot, n_neg).
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    positives, negatives = scores[labels == 1], scores[labels == 0]
    rng = np.random.default_rng(seed)
    positive_draws = rng.integers(0, len(positives), size=(n_boot, len(positives)))
    negative_draws = rng.integers(0, len(negatives), size=(n_boot, len(negatives)))
    aucs = []
    for b in range(n_boot):
        total = 0.0
        for x in positives[positive_draws[b]]:
            for y in negatives[negative_draws[b]]:
                total += pairwise_kernel(x, y)
        aucs.append(total / (len(positives) * len(negatives)))
    low, high = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def tied_table(seed: int, n: int = 25, n_models: int = 2):
    "Labels with both classes and integer-valued scores with many ties."
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = [rng.integers(0, 5, n) + (model + 1) * 0.5 * labels * rng.integers(0, 2, n) for model in range(n_models)]
    return labels, [row.astype(float) for row in scores]


def logistic_cohort(n: int, seed: int, separation: float = 1.0, id_prefix: str = "P"):
    "Balanced labels and logistic-model probabilities as a predictions table."
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    probabilities = 1 / (1 + np.exp(-(separation * (2 * labels - 1) + rng.normal(0, 1, n))))
    return pd.DataFrame({"patient_id": [f"{id_prefix}{i:04d}" for i in range(n)], LABEL_COLUMN: labels, "probability": probabilities})


def write_run(root: Path, name: str, arch: str, seq: str, separation: float, seed: int, synthetic: bool = True) -> Path:
    "A run folder with the files a training run writes, from simulated predictions."
    run_dir = root / name
    run_dir.mkdir(parents=True)
    params = {"seq": seq, "arch": arch, "image_size": 32, "depth": 16, "epochs": 2, "synthetic": synthetic}
    (run_dir / "params.json").write_text(json.dumps(params))
    frames = {
        "validation": logistic_cohort(40, seed, separation, id_prefix="V"),
        "external": logistic_cohort(30, seed + 1, separation, id_prefix="E"),
    }
    for cohort, frame in frames.items():
        frame.to_csv(run_dir / f"predictions_{cohort}.csv", index=False)
    write_metrics(run_dir, frames, synthetic=synthetic, n_boot=200)
    return run_dir


# ---------------------------------------------------------------------------------------------
# DeLong

@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_delong_matches_direct_computation(seed):
    labels, (scores_a, scores_b) = tied_table(seed)
    aucs, covariance = delong_reference(labels, [scores_a, scores_b])
    result = delong_test(labels, scores_a, scores_b)
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    assert result["auc_a"] == pytest.approx(aucs[0], abs=1e-10)
    assert result["auc_b"] == pytest.approx(aucs[1], abs=1e-10)
    assert result["auc_a"] == pytest.approx(roc_auc_score(labels, scores_a), abs=1e-10)
    assert result["se"] ** 2 == pytest.approx(variance, abs=1e-10)
    z = (aucs[0] - aucs[1]) / math.sqrt(variance)
    assert result["z"] == pytest.approx(z, abs=1e-10)
    assert result["p_value"] == pytest.approx(2 * norm.sf(abs(z)), abs=1e-10)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_delong_ci_matches_direct_variance(seed):
    labels, (scores, _) = tied_table(seed, n=30)
    aucs, covariance = delong_reference(labels, [scores])
    # A narrow level keeps the interval inside [0, 1], so no bound is clipped.
    auc, low, high = delong_ci(labels, scores, level=0.2)
    half_width = norm.ppf(0.6) * math.sqrt(covariance[0, 0])
    assert low > 0
    assert high < 1
    assert auc == pytest.approx(aucs[0], abs=1e-10)
    assert low == pytest.approx(aucs[0] - half_width, abs=1e-10)
    assert high == pytest.approx(aucs[0] + half_width, abs=1e-10)


def test_delong_hand_worked_example():
    # Patients (label, a, b): (1, 0.8, 0.7), (1, 0.4, 0.7), (0, 0.5, 0.7), (0, 0.1, 0.9).
    # Model a: psi(0.8, .) = [1, 1], psi(0.4, .) = [0, 1], so V10 = [1, 0.5], V01 = [0.5, 1], AUC = 0.75.
    #   S10 = var([1, 0.5]) = 0.125 and S01 = var([0.5, 1]) = 0.125 (n - 1 denominators), so
    #   Var(AUC_a) = 0.125 / 2 + 0.125 / 2 = 0.125.
    # Model b: psi(0.7, .) = [0.5, 0] for both positives, so V10 = [0.25, 0.25], V01 = [0.5, 0], AUC = 0.25.
    #   S10 = 0, S01 = 0.125. Cov(V10_a, V10_b) = 0 because V10_b is constant, and
    #   Cov(V01_a, V01_b) = ((0.5 - 0.75)(0.5 - 0.25) + (1 - 0.75)(0 - 0.25)) / 1 = -0.125.
    # Var(a - b) = (0.125 + 0 - 2 * 0) / 2 + (0.125 + 0.125 - 2 * (-0.125)) / 2 = 0.0625 + 0.25 = 0.3125,
    # so SE = sqrt(5) / 4, z = 0.5 / SE = 2 / sqrt(5) = 0.894 and p = 2 * (1 - Phi(0.894)) = 0.371.
    labels, model_a, model_b = [1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1], [0.7, 0.7, 0.7, 0.9]
    result = delong_test(labels, model_a, model_b)
    assert result["auc_a"] == pytest.approx(0.75, abs=1e-12)
    assert result["auc_b"] == pytest.approx(0.25, abs=1e-12)
    assert result["difference"] == pytest.approx(0.5, abs=1e-12)
    assert result["se"] == pytest.approx(math.sqrt(5) / 4, abs=1e-12)
    assert result["z"] == pytest.approx(2 / math.sqrt(5), abs=1e-12)
    assert result["p_value"] == pytest.approx(0.3711, abs=1e-4)
    _, covariance = delong_reference(labels, [model_a, model_b])
    np.testing.assert_allclose(covariance, [[0.125, -0.0625], [-0.0625, 0.0625]], atol=1e-12)


def test_delong_one_class_returns_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        result = delong_test([0, 0, 0], [0.1, 0.5, 0.3], [0.2, 0.2, 0.4])
        interval = delong_ci([1, 1], [0.1, 0.5])
    assert all(math.isnan(result[key]) for key in ("auc_a", "auc_b", "difference", "se", "z", "p_value"))
    assert all(math.isnan(value) for value in interval)
    assert "y_true has one class (n=3, positives=0), so delong_test returns NaN" in caplog.text
    assert "so delong_ci returns NaN" in caplog.text


def test_delong_rejects_nan_scores():
    with pytest.raises(ValueError, match="score_b: y_score contains 1 NaN"):
        delong_test([0, 1, 1], [0.1, 0.5, 0.7], [0.2, np.nan, 0.4])


# ---------------------------------------------------------------------------------------------
# Bootstrap interval of auc_ci

@pytest.mark.parametrize("seed", [0, 3])
def test_auc_ci_matches_loop_bootstrap(seed):
    labels, (scores, _) = tied_table(seed + 10, n=20)
    auc, low, high = auc_ci(labels, scores, n_boot=300, seed=seed, level=0.9)
    reference_low, reference_high = bootstrap_reference(labels, scores, n_boot=300, seed=seed, level=0.9)
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert low == pytest.approx(reference_low, abs=1e-12)
    assert high == pytest.approx(reference_high, abs=1e-12)


def test_intervals_cover_true_auc():
    # Binormal scores with unit variances and means 0 and 1 have a true AUC of Phi(1 / sqrt(2)) = 0.760.
    true_auc = norm.cdf(1 / math.sqrt(2))
    rng = np.random.default_rng(2024)
    labels = np.repeat([0, 1], 30)
    bootstrap_hits, delong_hits, centres = 0, 0, []
    n_trials = 200
    for trial in range(n_trials):
        scores = rng.normal(0, 1, 60) + labels
        auc, low, high = auc_ci(labels, scores, n_boot=400, seed=trial)
        bootstrap_hits += low <= true_auc <= high
        _, delong_low, delong_high = delong_ci(labels, scores)
        delong_hits += delong_low <= true_auc <= delong_high
        centres.append(auc)
    # With 200 trials the standard error of a 95% coverage estimate is about 0.015.
    assert 0.88 <= bootstrap_hits / n_trials <= 0.99
    assert 0.88 <= delong_hits / n_trials <= 0.99
    assert abs(np.mean(centres) - true_auc) < 0.01


@pytest.mark.parametrize("n_per_class", [12, 20])
def test_null_intervals_cover_half(n_per_class):
    # The sweep's validation (24) and external (40) cohorts: with scores independent of the labels
    # the true AUC is 0.5, and a 95% interval should miss it in about 5% of cohorts.
    rng = np.random.default_rng(n_per_class)
    labels = np.repeat([0, 1], n_per_class)
    n_trials = 300
    hits = 0
    for trial in range(n_trials):
        _, low, high = auc_ci(labels, rng.random(2 * n_per_class), n_boot=1000, seed=trial)
        hits += low <= 0.5 <= high
    # With 300 trials the standard error of a 95% coverage estimate is about 0.013.
    assert 0.91 <= hits / n_trials <= 0.99


def test_auc_ci_one_class_returns_nan(caplog):
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        result = auc_ci([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4])
    assert all(math.isnan(value) for value in result)
    assert "ROC AUC is undefined because y_true has one class (n=4, positives=4), so auc_ci returns NaN" in caplog.text


# ---------------------------------------------------------------------------------------------
# Calibration

@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_reliability_curve_matches_sklearn(strategy):
    frame = logistic_cohort(101, seed=9)
    curve = reliability_curve(frame[LABEL_COLUMN], frame.probability, n_bins=7, strategy=strategy)
    fraction, mean = calibration_curve(frame[LABEL_COLUMN], frame.probability, n_bins=7, strategy=strategy)
    np.testing.assert_allclose(curve.fraction_positive, fraction, atol=1e-12)
    np.testing.assert_allclose(curve.mean_predicted, mean, atol=1e-12)
    assert curve["count"].sum() == 101
    for row in curve.itertuples():
        in_bin = frame.probability[(frame.probability >= row.bin_low) & (frame.probability <= row.bin_high)]
        assert row.count <= len(in_bin)


def test_reliability_plot_shows_brier_and_counts():
    frame = logistic_cohort(40, seed=4)
    ax = plot_reliability({"external": frame}, n_bins=4, synthetic=True)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    brier = np.mean((frame.probability - frame[LABEL_COLUMN]) ** 2)
    assert legend[1] == f"external: Brier {brier:.3f}, n=40"
    assert [text.get_text() for text in ax.texts] == ["10", "10", "10", "10"]
    assert "SYNTHETIC" in ax.get_title()
    plt.close("all")


def test_reliability_rejects_nan():
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        reliability_curve([0, 1, 1], [0.2, np.nan, 0.6])


# ---------------------------------------------------------------------------------------------
# Leak-aware external metrics

def test_external_metrics_reports_both_versions():
    frame = logistic_cohort(30, seed=2, separation=0.5, id_prefix="E")
    flagged = {"E0001", "E0004", "E0007"}
    entries = external_metrics(frame, threshold=0.5, exclude_ids=flagged, n_boot=200)
    kept = frame[~frame.patient_id.isin(flagged)]
    main, every = entries["external"], entries["external_all"]
    assert (main["n"], main["n_total"], main["n_excluded"]) == (27, 30, 3)
    assert main["excluded_ids"] == sorted(flagged)
    assert main["auc"] == pytest.approx(roc_auc_score(kept[LABEL_COLUMN], kept.probability), abs=1e-12)
    assert every["n"] == 30
    assert every["auc"] == pytest.approx(roc_auc_score(frame[LABEL_COLUMN], frame.probability), abs=1e-12)


def test_external_metrics_one_class_left(caplog):
    frame = logistic_cohort(10, seed=2, id_prefix="E")
    positives = set(frame.patient_id[frame[LABEL_COLUMN] == 1])
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        entries = external_metrics(frame, exclude_ids=positives, n_boot=50)
    assert math.isnan(entries["external"]["auc"])
    assert entries["external"]["n"] == 5
    assert "one class" in caplog.text


def test_write_metrics_stores_leak_aware_entries(tmp_path):
    frame = logistic_cohort(20, seed=3, id_prefix="E")
    write_metrics(tmp_path, {"external": frame}, synthetic=False, n_boot=50, exclude_ids={"E0002"})
    stored = json.loads((tmp_path / "metrics.json").read_text())["cohorts"]
    assert stored["external"]["n"] == 19
    assert stored["external"]["excluded_ids"] == ["E0002"]
    assert stored["external_all"]["n"] == 20


# ---------------------------------------------------------------------------------------------
# Model selection, tables and plots on run folders

@pytest.fixture()
def run_folders(tmp_path):
    root = tmp_path / "runs"
    return [
        write_run(root, "resnet18-FLAIR", "resnet18", "FLAIR", separation=1.0, seed=10),
        write_run(root, "resnet18-T2w", "resnet18", "T2w", separation=0.4, seed=20),
        write_run(root, "densenet121-FLAIR", "densenet121", "FLAIR", separation=0.6, seed=30),
    ]


def test_select_model_uses_validation_only(run_folders):
    runs = load_runs(run_folders[0].parent)
    chosen, statement = select_model(runs)
    assert chosen["run"] == runs.loc[runs.validation_auc.idxmax(), "run"]
    assert not [column for column in chosen.index if column.startswith("external")]
    assert statement.count(".") == 1
    assert statement.endswith("no external result was read.")
    assert "SYNTHETIC" in statement
    reversed_external = runs.assign(external_auc=runs.external_auc[::-1].to_numpy())
    assert select_model(reversed_external)[0]["run"] == chosen["run"]
    with pytest.raises(ValueError, match="ranks validation results only"):
        select_model(runs, metric="external_auc")


def test_results_table_thesis_layout(run_folders, tmp_path):
    build_ensembles(run_folders[0].parent, tmp_path / "runs" / "ensembles", n_boot=100)
    table = results_table(tmp_path / "runs", layout="sequence")
    assert list(table.columns.get_level_values(0).unique()) == ["FLAIR", "T2w", "ensemble (mean)", "ensemble (stacked)"]
    assert list(table.columns.get_level_values(1)[:2]) == ["validation", "external"]
    assert table.loc["densenet121", ("ensemble (mean)", "external")] == "not run"
    assert table.loc["resnet18", ("ensemble (stacked)", "validation")] != "not run"
    assert table.attrs["caption"].startswith(SYNTHETIC_NOTE)


def test_forest_plot_marks_chance_and_band(run_folders):
    ax = plot_forest(run_folders)
    labels = [patch.get_label() for patch in ax.patches]
    assert any(label.startswith("0.55-0.65") for label in labels)
    assert any(line.get_label() == "chance (AUC 0.50)" and list(line.get_xdata()) == [0.5, 0.5] for line in ax.lines)
    assert "SYNTHETIC" in ax.get_title()
    assert len(ax.get_yticklabels()) == 6
    plt.close("all")


def test_delong_table_against_reference(run_folders):
    runs = load_runs(run_folders[0].parent)
    table = delong_table(runs, "resnet18-FLAIR")
    assert sorted(table.run) == ["densenet121-FLAIR", "resnet18-T2w"]
    assert (table.n == 40).all()
    reference = pd.read_csv(run_folders[0] / "predictions_validation.csv")
    other = pd.read_csv(run_folders[1] / "predictions_validation.csv")
    expected = delong_test(reference[LABEL_COLUMN], reference.probability, other.probability)
    row = table[table.run == "resnet18-T2w"].iloc[0]
    assert row.p_value == pytest.approx(expected["p_value"], abs=1e-12)


def test_summary_cli_prints_selection_and_writes_plots(run_folders, tmp_path):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = summary_cli([*map(str, run_folders), "--plot-dir", str(tmp_path / "plots")])
    output = stdout.getvalue()
    assert status == 0
    assert "Model selection (validation results only): Selected " in output
    assert output.count("  DeLong, validation: ") == 2
    # The external result of the chosen run comes after the choice and the tests.
    assert output.index("Chosen run, external (read after the choice)") > output.index("Model selection")
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == [
        "forest.png", "reliability_densenet121-FLAIR.png", "reliability_resnet18-FLAIR.png", "reliability_resnet18-T2w.png",
    ]
    assert "clinically useful" not in output


# ---------------------------------------------------------------------------------------------
# Ensembles

def sequence_frames(n: int, seed: int, id_prefix: str) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    weights = {"FLAIR": 1.0, "T1w": 0.0, "T2w": 0.7}
    return {
        name: pd.DataFrame({
            "patient_id": [f"{id_prefix}{i:03d}" for i in range(n)], LABEL_COLUMN: labels,
            "probability": 1 / (1 + np.exp(-(weight * (2 * labels - 1) + rng.normal(0, 1, n)))),
        })
        for name, weight in weights.items()
    }


def test_ensemble_mean_drops_unshared_patients(caplog):
    frames = sequence_frames(20, seed=1, id_prefix="V")
    frames["T1w"] = frames["T1w"].iloc[2:]
    with caplog.at_level(logging.WARNING, logger="mgmt_nb"):
        mean = ensemble_mean(frames)
    assert len(mean) == 18
    assert "2 of 20 patients dropped" in caplog.text
    expected = np.mean([frame.set_index("patient_id").loc[mean.patient_id, "probability"] for frame in frames.values()], axis=0)
    np.testing.assert_allclose(mean.probability, expected, atol=1e-12)


def test_stacker_never_fits_on_target_labels():
    fit_frames = sequence_frames(60, seed=2, id_prefix="V")
    target_frames = sequence_frames(44, seed=3, id_prefix="E")
    fitted_sizes = []
    original_fit = LogisticRegression.fit

    def recording_fit(self, features, labels, *args, **kwargs):
        fitted_sizes.append(len(labels))
        return original_fit(self, features, labels, *args, **kwargs)

    with mock.patch.object(LogisticRegression, "fit", recording_fit):
        result = stack_predictions(fit_frames, target_frames, n_splits=5, n_boot=100)
    # Five cross-validation fits on 48 of the 60 fit patients, then one fit on all 60, never on the 44 targets.
    assert fitted_sizes == [48, 48, 48, 48, 48, 60]
    flipped = {name: frame.assign(**{LABEL_COLUMN: 1 - frame[LABEL_COLUMN]}) for name, frame in target_frames.items()}
    again = stack_predictions(fit_frames, flipped, n_splits=5, n_boot=100)
    np.testing.assert_array_equal(again["predictions"].probability, result["predictions"].probability)
    assert again["metrics"]["auc"] == pytest.approx(1 - result["metrics"]["auc"], abs=1e-12)
    assert set(result["metrics"]) == set(binary_metrics([0, 1], [0.2, 0.8], n_boot=10))


def test_stacker_rejects_nan_probabilities():
    frames = sequence_frames(20, seed=4, id_prefix="V")
    frames["T2w"] = frames["T2w"].assign(probability=np.nan)
    with pytest.raises(ValueError, match="predictions of 'T2w': y_score contains 20 NaN"):
        stack_predictions(frames)
