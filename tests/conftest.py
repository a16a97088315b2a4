"""Shared fixtures: a small phantom cohort pair and one end-to-end training run made with papermill."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_NOTEBOOK = REPO / "nbs" / "05_train.ipynb"


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory):
    "Point the mgmt_nb cache at a fresh folder for the whole test session."
    root = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("MGMT_NB_CACHE")
    os.environ["MGMT_NB_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("MGMT_NB_CACHE", None)
    else:
        os.environ["MGMT_NB_CACHE"] = previous


@pytest.fixture(scope="session")
def phantom_pair(cache_root):
    "Generate a small synthetic training cohort (RSNA layout) and external cohort (NIfTI layout)."
    from mgmt_nb.phantom import phantom_cohorts

    return phantom_cohorts(n_train=16, n_external=8, signal=0.8, seed=5)


def run_training(output_dir: Path, run_name: str, cache_root: Path, cwd: Path = REPO / "nbs", **parameters) -> subprocess.CompletedProcess:
    "Execute the training notebook with papermill in a subprocess, as a user does from the shell."
    defaults = dict(arch="resnet18", image_size=32, depth=16, batch_size=4, epochs=2,
                    phantom_train=16, phantom_external=8, seed=5)
    arguments = []
    for name, value in {**defaults, **parameters}.items():
        arguments += ["-p", name, str(value)]
    command = [
        sys.executable, "-m", "papermill", str(TRAIN_NOTEBOOK), str(output_dir / f"{run_name}.ipynb"),
        "-p", "output_dir", str(output_dir), "-p", "run_name", run_name, *arguments,
        "--cwd", str(cwd), "--no-progress-bar",
    ]
    environment = {**os.environ, "MGMT_NB_CACHE": str(cache_root)}
    environment.pop("IN_TEST", None)
    # The limit only catches a hung kernel: on 2 cores shared with 4 other jobs, one run took 15 minutes.
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=1800)


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory, cache_root, phantom_pair):
    """One short training run on the phantom cohort, shared by the end-to-end tests.

    It runs as a user outside the repository would, on a copy of the training cohort whose first
    patient lacks the FLAIR series, so that one run checks both cases besides the files it writes.
    """
    output_dir = tmp_path_factory.mktemp("runs")
    cohort = output_dir / "cohort"
    shutil.copytree(phantom_pair[0], cohort)
    missing = sorted((cohort / "train").iterdir())[0] / "FLAIR"
    shutil.rmtree(missing)
    outside = output_dir / "elsewhere"
    outside.mkdir()
    # freeze_epochs=1 trains the head alone in the first epoch, so the run covers the frozen-backbone stage too.
    result = run_training(output_dir, "phantom", cache_root, cwd=outside, data_dir=cohort, external_dir=phantom_pair[1], freeze_epochs=1)
    assert result.returncode == 0, result.stderr[-4000:]
    run_dir = output_dir / "phantom"
    (run_dir.parent / "fixture.json").write_text(json.dumps({"cwd": str(outside), "missing_series": str(missing)}))
    return run_dir
