"""params.json of a training run: written once, and a resumed run must bring the same parameters."""
import json

import pytest

from mgmt_nb.core import SYNTHETIC_NOTE
from mgmt_nb.train import save_params

PARAMS = {"arch": "resnet18", "seq": "FLAIR", "image_size": 32, "depth": 16, "sequences": ["FLAIR"], "weights": None}


def test_params_record_synthetic_note(tmp_path):
    path = save_params(tmp_path, PARAMS, synthetic=True)
    stored = json.loads(path.read_text())
    assert stored["synthetic"] is True
    assert stored["note"] == SYNTHETIC_NOTE
    assert stored["sequences"] == ["FLAIR"]


def test_same_params_resume(tmp_path):
    save_params(tmp_path, PARAMS, synthetic=True)
    save_params(tmp_path, dict(PARAMS), synthetic=True)  # a resumed run writes the same record again
    assert json.loads((tmp_path / "params.json").read_text())["image_size"] == 32


def test_other_params_rejected(tmp_path):
    save_params(tmp_path, PARAMS, synthetic=True)
    before = (tmp_path / "params.json").read_text()
    with pytest.raises(ValueError, match=r"image_size: 32 -> 48.*pass another run_name, or delete the folder"):
        save_params(tmp_path, {**PARAMS, "image_size": 48}, synthetic=True)
    assert (tmp_path / "params.json").read_text() == before


def test_new_note_wording_still_resumes(tmp_path):
    path = save_params(tmp_path, PARAMS, synthetic=True)
    path.write_text(json.dumps({**json.loads(path.read_text()), "note": "an older wording of the note"}))
    save_params(tmp_path, PARAMS, synthetic=True)
    assert json.loads(path.read_text())["note"] == SYNTHETIC_NOTE


def test_default_shown_for_unrecorded_param(tmp_path):
    "A parameter recorded only when it differs from its default reads 'the default' in the mismatch message, not None."
    save_params(tmp_path, {**PARAMS, "monitor": "val_auc"}, synthetic=True)
    with pytest.raises(ValueError, match=r"monitor: 'val_auc' -> the default"):
        save_params(tmp_path, PARAMS, synthetic=True)
