"""The LSTM classifier: sequence windows in time order, early stopping, determinism, saving."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.utils.estimator_checks import check_estimator

from quanttrain.trainer.lstm import CHECKPOINT_FILE, LSTMClassifier

torch.set_num_threads(1)

# Predictions of a sequence model depend on the rows before each row, so the
# checks that reorder or subsample the rows of one predict call cannot hold.
ORDER_DEPENDENT_CHECKS = {
    "check_methods_subset_invariance": "a row's window holds the rows before it in the same call",
    "check_methods_sample_order_invariance": "a row's window holds the rows before it in the same call",
}


def small_lstm(**overrides) -> LSTMClassifier:
    params = dict(hidden_size=8, sequence_length=3, max_epochs=15, batch_size=32, learning_rate=0.02,
                  patience=5, random_state=0, device="cpu")
    return LSTMClassifier(**{**params, **overrides})


def lagged_sign_data(n_rows: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose label is the sign of the previous row's first feature: only a window can learn it."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 2)).astype(np.float32)
    y = np.zeros(n_rows, dtype=int)
    y[1:] = (X[:-1, 0] > 0).astype(int)
    return X, y


def test_lstm_learns_a_pattern_in_the_previous_row():
    X, y = lagged_sign_data(600)
    model = small_lstm(max_epochs=40).fit(X[:450], y[:450])

    accuracy = float(np.mean(model.predict(X[450:]) == y[450:]))

    assert accuracy > 0.85


def test_lstm_probabilities_have_one_column_per_class():
    X, y = lagged_sign_data()
    probabilities = small_lstm(max_epochs=2).fit(X, y).predict_proba(X)

    assert probabilities.shape == (len(X), 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_lstm_prediction_ignores_later_rows():
    X, y = lagged_sign_data()
    model = small_lstm(max_epochs=3).fit(X, y)
    changed = X.copy()
    changed[200:] = 100.0

    np.testing.assert_allclose(model.predict_proba(changed)[:200], model.predict_proba(X)[:200], rtol=1e-6)


def test_lstm_pads_first_windows_with_first_row():
    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    windows = small_lstm(sequence_length=3)._build_windows(X, torch.device("cpu"))

    np.testing.assert_array_equal(windows[0].numpy(), X[[0, 0, 0]])
    np.testing.assert_array_equal(windows[1].numpy(), X[[0, 0, 1]])
    np.testing.assert_array_equal(windows[5].numpy(), X[[3, 4, 5]])


def test_lstm_validation_windows_are_the_last_after_the_gap():
    train, validation = small_lstm(validation_fraction=0.2, validation_gap=3)._split_indices(100)

    assert train.tolist() == list(range(77))
    assert validation.tolist() == list(range(80, 100))


def test_lstm_without_validation_windows_trains_every_epoch():
    X, y = lagged_sign_data(50)
    model = small_lstm(validation_fraction=0.0, max_epochs=4).fit(X, y)

    assert len(model.history_) == 4
    assert model.best_epoch_ == 4


def test_lstm_early_stopping_keeps_best_epoch():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3)).astype(np.float32)
    y = rng.integers(0, 2, size=300)  # noise: the validation loss soon stops improving
    model = small_lstm(max_epochs=60, patience=3, learning_rate=0.05, validation_fraction=0.3).fit(X, y)
    losses = [entry["validation_loss"] for entry in model.history_]

    assert len(model.history_) < 60
    assert model.best_epoch_ == int(np.argmin(losses)) + 1
    assert len(model.history_) == model.best_epoch_ + 3


def test_lstm_same_seed_gives_same_model():
    X, y = lagged_sign_data()
    first = small_lstm(max_epochs=3, dropout=0.2, num_layers=2).fit(X, y).predict_proba(X)
    second = small_lstm(max_epochs=3, dropout=0.2, num_layers=2).fit(X, y).predict_proba(X)

    np.testing.assert_array_equal(first, second)


def test_lstm_other_seed_gives_other_model():
    X, y = lagged_sign_data()
    first = small_lstm(max_epochs=2).fit(X, y).predict_proba(X)
    second = small_lstm(max_epochs=2, random_state=1).fit(X, y).predict_proba(X)

    assert not np.allclose(first, second)


def test_lstm_fit_leaves_global_random_state_alone():
    X, y = lagged_sign_data(60)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    small_lstm(max_epochs=1).fit(X, y)

    torch.testing.assert_close(torch.rand(3), expected)


def test_lstm_maps_string_labels_back():
    X, y = lagged_sign_data()
    labels = np.where(y == 1, "up", "down")
    model = small_lstm(max_epochs=2).fit(X, labels)

    assert model.classes_.tolist() == ["down", "up"]
    assert set(model.predict(X)) <= {"down", "up"}


def test_lstm_sets_fitted_attributes():
    X, y = lagged_sign_data(80)
    model = small_lstm(max_epochs=2).fit(X, y)

    assert model.n_features_in_ == 2
    assert model.classes_.tolist() == [0, 1]
    assert isinstance(model.model_, torch.nn.Module)
    assert [entry["epoch"] for entry in model.history_] == [1, 2]
    assert 1 <= model.best_epoch_ <= 2


def test_lstm_clone_keeps_parameters():
    model = small_lstm(hidden_size=5, checkpoint_dir="ckpt")
    copied = clone(model)

    assert copied.get_params() == model.get_params()
    assert copied.set_params(hidden_size=7).hidden_size == 7


def test_lstm_passes_scikit_learn_estimator_checks():
    results = check_estimator(small_lstm(sequence_length=2, max_epochs=20, learning_rate=0.05),
                              expected_failed_checks=ORDER_DEPENDENT_CHECKS, on_skip=None)

    failed = [result["check_name"] for result in results if result["status"] == "failed"]
    assert failed == []


def test_lstm_state_dict_round_trip(tmp_path):
    X, y = lagged_sign_data()
    model = small_lstm(max_epochs=2).fit(X, y)
    path = tmp_path / "model.pt"
    model.save(path)

    loaded = LSTMClassifier.load(path)

    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.get_params() == model.get_params()
    assert loaded.best_epoch_ == model.best_epoch_


def test_lstm_saved_file_loads_with_weights_only(tmp_path):
    X, y = lagged_sign_data(80)
    path = tmp_path / "model.pt"
    small_lstm(max_epochs=1).fit(X, np.where(y == 1, "up", "down")).save(path)

    state = torch.load(path, weights_only=True)

    assert state["classes"] == ["down", "up"]


def test_lstm_resumes_from_checkpoint_after_crash(tmp_path, monkeypatch):
    X, y = lagged_sign_data()
    expected = small_lstm(max_epochs=6, patience=None).fit(X, y).predict_proba(X)
    original = LSTMClassifier._train_epoch
    calls = []

    def crash_in_epoch_five(self, *args):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("killed")
        return original(self, *args)

    monkeypatch.setattr(LSTMClassifier, "_train_epoch", crash_in_epoch_five)
    with pytest.raises(RuntimeError, match="killed"):
        small_lstm(max_epochs=6, patience=None, checkpoint_dir=str(tmp_path), checkpoint_every=2).fit(X, y)
    resumed = small_lstm(max_epochs=6, patience=None, checkpoint_dir=str(tmp_path), checkpoint_every=2).fit(X, y)

    assert len(calls) == 4 + 1 + 2  # four epochs, the crash, then epochs five and six
    assert [entry["epoch"] for entry in resumed.history_] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(resumed.predict_proba(X), expected, rtol=1e-6)


def test_lstm_ignores_checkpoint_of_other_data(tmp_path, caplog):
    X, y = lagged_sign_data()
    small_lstm(max_epochs=2, checkpoint_dir=str(tmp_path)).fit(X, y)
    expected = small_lstm(max_epochs=2).fit(X[:200], y[:200]).predict_proba(X)

    other = small_lstm(max_epochs=2, checkpoint_dir=str(tmp_path)).fit(X[:200], y[:200])

    assert "ignoring checkpoint" in caplog.text
    np.testing.assert_array_equal(other.predict_proba(X), expected)


@pytest.mark.parametrize(("name", "value"), [("hidden_size", 0), ("patience", 0), ("dropout", 1.0),
                                             ("validation_fraction", 1.0), ("learning_rate", 0.0),
                                             ("num_threads", 0)])
def test_lstm_rejects_invalid_parameter(name, value):
    X, y = lagged_sign_data(40)

    with pytest.raises(ValueError, match=name):
        small_lstm(**{name: value}).fit(X, y)


def test_lstm_rejects_too_few_rows_for_validation():
    X, y = lagged_sign_data(10)

    with pytest.raises(ValueError, match="too few"):
        small_lstm(validation_fraction=0.5, validation_gap=5).fit(X, y)


def test_lstm_num_threads_applies_during_fit_only(monkeypatch):
    X, y = lagged_sign_data(60)
    seen = []
    original = LSTMClassifier._train_epoch

    def record_threads(self, *args):
        seen.append(torch.get_num_threads())
        return original(self, *args)

    monkeypatch.setattr(LSTMClassifier, "_train_epoch", record_threads)
    before = torch.get_num_threads()
    small_lstm(max_epochs=1, num_threads=before + 1).fit(X, y)

    assert seen == [before + 1]
    assert torch.get_num_threads() == before


def test_lstm_fits_with_one_thread_by_default(monkeypatch):
    X, y = lagged_sign_data(60)
    seen = []
    original = LSTMClassifier._train_epoch

    def record_threads(self, *args):
        seen.append(torch.get_num_threads())
        return original(self, *args)

    monkeypatch.setattr(LSTMClassifier, "_train_epoch", record_threads)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        small_lstm(max_epochs=1).fit(X, y)
    finally:
        torch.set_num_threads(before)

    assert seen == [1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on machines without CUDA")
def test_lstm_auto_device_is_cpu_without_cuda():
    X, y = lagged_sign_data(40)

    assert small_lstm(device="auto", max_epochs=1).fit(X, y).device_ == "cpu"
