"""A training run stopped at an epoch's end and started again must end as the same run left alone.

`train_model` runs for real on a tiny Dense model with fixed data. A callback placed first sets the
monitored value of each epoch from a script, so the checkpoint, early stopping and learning-rate
schedule see chosen values. A second callback raises at a chosen place in the callback list to
stand in for a stop. Each case compares the stopped and resumed run with the same run left alone:
the log, the epochs trained, the learning rate of every epoch, the checkpoint record and the
checkpoint's weights.
"""
import h5py
import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

import mgmt_nb.dataloader
import mgmt_nb.model
import mgmt_nb.train as training
from mgmt_nb.core import LABEL_COLUMN

# Keras converts the learning rate through np.array, which NumPy 2 warns about once per epoch and callback.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
CALLBACK_ORDER = ["backup", "log", "checkpoint", "early_stopping", "schedule", "nan"]  # make_callbacks' list, in order
FRAME = pd.DataFrame({LABEL_COLUMN: [0, 1] * 4})


class Stopped(Exception):
    "Stands in for a stop at the end of an epoch."


def tiny_model(arch, input_shape, weights=None, dropout=0.0, l2=0.0):
    inputs = keras.Input(input_shape)
    hidden = keras.layers.Dense(4, name=arch)(keras.layers.Flatten()(inputs))  # the "backbone" that freeze_epochs freezes
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="probability")(hidden))


def fixed_data(frame, batch_size, training=False, augment=None, seed=0):
    features = np.random.default_rng(0).normal(size=(len(frame), 2, 2, 2, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((features, frame[LABEL_COLUMN].to_numpy().astype("float32"))).batch(batch_size)


@pytest.fixture
def scripted(monkeypatch):
    "Patch train_model's model, data and callbacks; yields a function that trains one run and returns what it saw."
    monkeypatch.setattr(mgmt_nb.model, "build_model", tiny_model)
    monkeypatch.setattr(mgmt_nb.model, "set_batchnorm_momentum", lambda model, momentum: None)
    monkeypatch.setattr(mgmt_nb.dataloader, "make_dataset", fixed_data)
    real_make_callbacks = training.make_callbacks

    def train(folder, values, monitor="val_loss", epochs=10, freeze_epochs=0, patience=3, stop=None):
        "Train in `folder` with the monitored value of epoch e set to values[e]; stop=(epoch, callback name) raises after that callback."
        rates = {}

        class Script(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs[monitor] = values[epoch]
                rates[epoch] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

        class Stop(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == stop[0]:
                    raise Stopped

        def make_callbacks(*args, **kwargs):
            callbacks = [Script(), *real_make_callbacks(*args, **kwargs)]
            if stop is not None:
                callbacks.insert(CALLBACK_ORDER.index(stop[1]) + 2, Stop())
            return callbacks

        monkeypatch.setattr(training, "make_callbacks", make_callbacks)
        params = dict(
            arch="tiny", image_size=2, depth=2, sequences=["FLAIR"], weights=None, dropout=0.0, l2=0.0, bn_momentum=0.9,
            learning_rate=1e-3, accumulation_steps=1, jit_compile=False, batch_size=4, epochs=epochs,
            freeze_epochs=freeze_epochs, patience=patience, augment=False, seed=1, monitor=monitor,
        )
        try:
            training.train_model(FRAME, FRAME, folder, params)
        except Stopped:
            pass
        return rates

    return train


def checkpoint_arrays(folder) -> dict:
    arrays = {}
    with h5py.File(folder / "best.weights.h5", "r") as file:
        file["layers"].visititems(lambda name, item: arrays.update({name: item[()]}) if isinstance(item, h5py.Dataset) else None)
    return arrays


def assert_same_run(left_alone, resumed, rates_alone, rates_resumed):
    history_alone, history_resumed = pd.read_csv(left_alone / "history.csv"), pd.read_csv(resumed / "history.csv")
    assert history_resumed["epoch"].tolist() == history_alone["epoch"].tolist()
    assert rates_resumed == rates_alone
    assert training.read_checkpoint_record(resumed) == training.read_checkpoint_record(left_alone)
    alone, again = checkpoint_arrays(left_alone), checkpoint_arrays(resumed)
    assert alone.keys() == again.keys()
    for name in alone:
        np.testing.assert_allclose(again[name], alone[name], rtol=1e-6, err_msg=name)
    assert not (resumed / "backup").exists()


# Patience 3 (the schedule's is 2): the rate halves after epochs 3 and 6, and early stopping ends the fit after epoch 7.
LOSSES = [0.50, 0.40, 0.45, 0.46, 0.38, 0.39, 0.41, 0.42, 0.43, 0.44]


@pytest.mark.parametrize("stop", [
    (2, "nan"),  # an ordinary stop between epochs
    (3, "nan"),  # after the epoch whose plateau halved the rate, which the backup does not hold
    (4, "log"),  # after the log row of an improving epoch, before its checkpoint
    (7, "early_stopping"),  # after early stopping ended the fit, before Keras deleted the backup
])
def test_stopped_run_resumes_as_left_alone(tmp_path, scripted, stop):
    rates_alone = scripted(tmp_path / "alone", LOSSES)
    first = scripted(tmp_path / "stopped", LOSSES, stop=stop)
    assert max(first) == stop[0]
    rates_resumed = {**first, **scripted(tmp_path / "stopped", LOSSES)}
    assert_same_run(tmp_path / "alone", tmp_path / "stopped", rates_alone, rates_resumed)


# Two frozen-backbone epochs (best 0.40 at epoch 1), then a main fit that improves at every epoch after epoch 3.
FROZEN_LOSSES = [0.50, 0.40, 0.60, 0.50, 0.45, 0.41, 0.35, 0.34]


@pytest.mark.parametrize("stop", [
    (0, "nan"),  # in the frozen fit
    (1, "nan"),  # after the last frozen epoch, before Keras deleted the frozen fit's backup
    (1, "log"),  # the same, before the checkpoint of that epoch
    (3, "nan"),  # in the main fit, whose patience must not count the frozen epochs
])
def test_stopped_frozen_run_resumes_as_left_alone(tmp_path, scripted, stop):
    rates_alone = scripted(tmp_path / "alone", FROZEN_LOSSES, epochs=8, freeze_epochs=2)
    first = scripted(tmp_path / "stopped", FROZEN_LOSSES, epochs=8, freeze_epochs=2, stop=stop)
    rates_resumed = {**first, **scripted(tmp_path / "stopped", FROZEN_LOSSES, epochs=8, freeze_epochs=2)}
    assert_same_run(tmp_path / "alone", tmp_path / "stopped", rates_alone, rates_resumed)


def test_stopped_auc_run_resumes_as_left_alone(tmp_path, scripted, capsys):
    aucs = [0.55, 0.70, 0.65, 0.72, 0.60, 0.61, 0.62, 0.63]
    rates_alone = scripted(tmp_path / "alone", aucs, monitor="val_auc", epochs=8)
    first = scripted(tmp_path / "stopped", aucs, monitor="val_auc", epochs=8, stop=(2, "nan"))
    capsys.readouterr()
    rates_resumed = {**first, **scripted(tmp_path / "stopped", aucs, monitor="val_auc", epochs=8)}
    assert "resuming the stopped fit from its backup at epoch 4 (epoch 3 in history.csv)" in capsys.readouterr().out
    assert_same_run(tmp_path / "alone", tmp_path / "stopped", rates_alone, rates_resumed)
    assert training.read_checkpoint_record(tmp_path / "stopped")["epoch"] == 3
