"""Unit tests of the distributed helpers, checkpoints and the DDP loop in one process.

The multi-process behaviour (real torchrun ranks) is in test_torchrun.py.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from quanttrain.trainer import checkpoint as checkpoints  # noqa: E402
from quanttrain.trainer import ddp_lstm, distributed  # noqa: E402
from quanttrain.trainer.summary import EXIT_RETRYABLE  # noqa: E402


# --- the torchrun environment -------------------------------------------------------------


def test_context_reads_torchrun_variables():
    context = distributed.DistributedContext.from_environment({
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "job-0.job", "MASTER_PORT": "29500",
        "TORCHELASTIC_RESTART_COUNT": "2", "TORCHELASTIC_RUN_ID": "uid-1",
    })
    assert (context.rank, context.world_size) == (3, 4)
    assert (context.local_rank, context.local_world_size) == (1, 2)
    assert (context.master_addr, context.master_port) == ("job-0.job", 29500)
    assert (context.restart_count, context.run_id) == (2, "uid-1")
    assert context.is_distributed
    assert not context.is_primary


def test_context_without_variables_is_single_process():
    context = distributed.DistributedContext.from_environment({})
    assert context.world_size == 1
    assert context.is_primary
    assert not context.is_distributed


def test_context_rejects_malformed_variables_together():
    with pytest.raises(ValueError) as raised:
        distributed.DistributedContext.from_environment({"RANK": "zero", "WORLD_SIZE": "two"})
    assert "RANK='zero'" in str(raised.value)
    assert "WORLD_SIZE='two'" in str(raised.value)


def test_context_rejects_rank_outside_world():
    with pytest.raises(ValueError, match="RANK=2 must be in 0..WORLD_SIZE-1"):
        distributed.DistributedContext.from_environment({"RANK": "2", "WORLD_SIZE": "2"})


def test_init_outside_torchrun_is_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    context = distributed.init_distributed(gpu=False, timeout_seconds=5)
    try:
        assert not context.is_distributed
        assert context.device == "cpu"
        assert not torch.distributed.is_initialized()
    finally:
        distributed.shutdown()


def test_init_without_cuda_falls_back_to_cpu(monkeypatch, caplog):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    context = distributed.init_distributed(gpu=True, timeout_seconds=5)
    distributed.shutdown()
    assert context.device == "cpu"
    assert "CUDA is not available" in caplog.text


def test_collectives_in_one_process_are_local():
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_gather_objects("x") == ["x"]
    assert distributed.gather_objects_to_primary("x") == ["x"]
    assert distributed.all_reduce_sum([1.5, 2.0]) == [1.5, 2.0]
    assert distributed.share_exit_code(3) == 3
    distributed.barrier()
    assert distributed.is_primary()


def test_failed_collective_becomes_retryable_error():
    with pytest.raises(distributed.DistributedError) as raised:
        with distributed.translate_errors("gathering trial results"):
            raise RuntimeError("Connection closed by peer [127.0.0.1]:1234\nmore detail")
    message = str(raised.value)
    assert "while gathering trial results" in message
    assert "Connection closed by peer" in message
    assert "more detail" not in message
    assert raised.value.exit_code == EXIT_RETRYABLE


def test_other_runtime_errors_pass_through_unchanged():
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        with distributed.translate_errors("training an epoch"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)")


def test_exit_code_for_maps_only_distributed_failures():
    assert distributed.exit_code_for(distributed.DistributedError("lost")) == EXIT_RETRYABLE
    assert distributed.exit_code_for(torch.distributed.DistNetworkError("store down")) == EXIT_RETRYABLE
    assert distributed.exit_code_for(ValueError("bad spec")) is None


# --- checkpoints --------------------------------------------------------------------------


def _state(value: float) -> dict:
    return {"fingerprint": "run-a", "model": {"w": torch.full((2,), value)}, "best_loss": value}


def test_checkpoint_round_trips_with_weights_only(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path, 3, _state(0.5))
    loaded = checkpoints.load_checkpoint(path)
    assert path.name == "epoch-000003.pt"
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["model"]["w"], torch.full((2,), 0.5))


def test_checkpoint_write_leaves_no_temporary_file(tmp_path):
    checkpoints.save_checkpoint(tmp_path, 1, _state(0.5))
    assert [path.name for path in tmp_path.iterdir()] == ["epoch-000001.pt"]


def test_checkpoint_keeps_only_the_latest(tmp_path):
    for epoch in (2, 4, 6, 8):
        checkpoints.save_checkpoint(tmp_path, epoch, _state(float(epoch)))
    names = [path.name for path in checkpoints.list_checkpoints(tmp_path)]
    assert names == ["epoch-000006.pt", "epoch-000008.pt"]


def test_load_latest_picks_the_newest_epoch(tmp_path):
    checkpoints.save_checkpoint(tmp_path, 2, _state(2.0))
    checkpoints.save_checkpoint(tmp_path, 10, _state(10.0))
    assert checkpoints.load_latest(tmp_path, "run-a")["epoch"] == 10


def test_load_latest_skips_a_corrupt_file(tmp_path, caplog):
    checkpoints.save_checkpoint(tmp_path, 2, _state(2.0))
    checkpoints.checkpoint_path(tmp_path, 4).write_bytes(b"truncated")
    assert checkpoints.load_latest(tmp_path, "run-a")["epoch"] == 2
    assert "epoch-000004.pt is unreadable" in caplog.text


def test_load_latest_ignores_another_runs_checkpoint(tmp_path, caplog):
    checkpoints.save_checkpoint(tmp_path, 2, _state(2.0))
    assert checkpoints.load_latest(tmp_path, "run-b") is None
    assert "belongs to another run" in caplog.text


def test_load_rejects_a_pickled_object(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    path = checkpoints.checkpoint_path(tmp_path, 1)
    torch.save({"epoch": 1, "payload": Payload()}, path, pickle_module=pickle)
    with pytest.raises(ValueError, match="unsafe to load"):
        checkpoints.load_checkpoint(path)


def test_remove_checkpoints_drops_empty_parent(tmp_path):
    folder = tmp_path / "checkpoints" / "run"
    checkpoints.save_checkpoint(folder, 1, _state(1.0))
    checkpoints.remove_checkpoints(folder)
    assert not (tmp_path / "checkpoints").exists()


def test_remove_checkpoints_keeps_other_runs(tmp_path):
    checkpoints.save_checkpoint(tmp_path / "checkpoints" / "run-a", 1, _state(1.0))
    checkpoints.save_checkpoint(tmp_path / "checkpoints" / "run-b", 1, _state(1.0))
    checkpoints.remove_checkpoints(tmp_path / "checkpoints" / "run-a")
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["run-b"]


def test_fingerprint_changes_with_the_facts():
    assert checkpoints.fingerprint(hidden=32, rows=100) == checkpoints.fingerprint(rows=100, hidden=32)
    assert checkpoints.fingerprint(hidden=32, rows=100) != checkpoints.fingerprint(hidden=64, rows=100)


# --- the DDP classifier in one process -----------------------------------------------------


def test_rank_share_covers_every_window_with_equal_counts():
    order = torch.tensor([5, 3, 9, 0, 7, 1, 8])
    shares = [ddp_lstm.rank_share(order, rank, 2) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1])
    assert set(torch.cat(shares).tolist()) == set(order.tolist())


def test_rank_share_pads_with_the_first_windows_only():
    order = torch.arange(10, 17)
    shares = [ddp_lstm.rank_share(order, rank, 3) for rank in range(3)]
    assert sorted(torch.cat(shares).tolist()) == sorted([10, 11, *range(10, 17)])


def test_rank_share_rejects_fewer_windows_than_ranks():
    with pytest.raises(ValueError, match="2 training windows cannot be split over 4 ranks"):
        ddp_lstm.rank_share(torch.arange(2), 0, 4)


def _rows(count: int = 300):
    generator = np.random.default_rng(7)
    X = generator.normal(size=(count, 3)).astype(np.float32)
    y = (X[:, 0] + 0.5 * np.roll(X[:, 1], 1) > 0).astype(int)
    return X, y


def _classifier(**overrides):
    params = dict(hidden_size=8, sequence_length=6, batch_size=32, max_epochs=6, patience=None,
                  validation_fraction=0.2, random_state=3, dropout=0.1, device="cpu")
    return ddp_lstm.DistributedLSTMClassifier(**{**params, **overrides})


class _Crash(Exception):
    pass


def test_classifier_trains_outside_torchrun():
    X, y = _rows()
    model = _classifier().fit(X, y)
    assert len(model.history_) == 6
    assert model.predict_proba(X).shape == (len(X), 2)


def test_classifier_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    X, y = _rows()
    uninterrupted = _classifier().fit(X, y)

    original = ddp_lstm.DistributedLSTMClassifier._validation_loss
    calls = {"count": 0}

    def crash_in_epoch_five(self, *args):
        calls["count"] += 1
        if calls["count"] == 5:
            raise _Crash()
        return original(self, *args)

    monkeypatch.setattr(ddp_lstm.DistributedLSTMClassifier, "_validation_loss", crash_in_epoch_five)
    with pytest.raises(_Crash):
        _classifier(checkpoint_dir=str(tmp_path), checkpoint_every=2).fit(X, y)
    monkeypatch.setattr(ddp_lstm.DistributedLSTMClassifier, "_validation_loss", original)
    assert [path.name for path in checkpoints.list_checkpoints(tmp_path)] == ["epoch-000002.pt", "epoch-000004.pt"]

    resumed = _classifier(checkpoint_dir=str(tmp_path), checkpoint_every=2).fit(X, y)
    assert [entry["epoch"] for entry in resumed.history_] == [1, 2, 3, 4, 5, 6]
    for key, value in uninterrupted.model_.state_dict().items():
        assert torch.allclose(resumed.model_.state_dict()[key], value, atol=1e-6), key


def test_classifier_checkpoint_holds_the_scaler_state(tmp_path):
    X, y = _rows()
    _classifier(checkpoint_dir=str(tmp_path), checkpoint_every=3).fit(X, y)
    saved = checkpoints.load_checkpoint(checkpoints.list_checkpoints(tmp_path)[-1])
    assert "scaler" in saved
    assert saved["epoch"] == 6


def test_final_fit_outside_torchrun_keeps_the_plain_model(tmp_path):
    from sklearn.pipeline import Pipeline

    from quanttrain.trainer.lstm import LSTMClassifier

    prepared = ddp_lstm.prepare_final_fit(Pipeline([("model", LSTMClassifier())]), tmp_path / "run")
    assert type(prepared.steps[-1][1]) is LSTMClassifier
    assert prepared.steps[-1][1].checkpoint_dir == str(tmp_path / "run")


def test_tree_final_fit_runs_on_rank_zero(monkeypatch):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([("model", RandomForestClassifier())])
    monkeypatch.setattr(distributed, "_active", distributed.DistributedContext(rank=1, world_size=2))
    assert ddp_lstm.prepare_final_fit(pipeline) is None
    monkeypatch.setattr(distributed, "_active", distributed.DistributedContext(rank=0, world_size=2))
    assert ddp_lstm.prepare_final_fit(pipeline) is pipeline


def test_lstm_final_fit_runs_on_every_rank(monkeypatch):
    from sklearn.pipeline import Pipeline

    from quanttrain.trainer.lstm import LSTMClassifier

    monkeypatch.setattr(distributed, "_active", distributed.DistributedContext(rank=1, world_size=2))
    prepared = ddp_lstm.prepare_final_fit(Pipeline([("model", LSTMClassifier(hidden_size=7))]))
    assert type(prepared.steps[-1][1]) is ddp_lstm.DistributedLSTMClassifier
    assert prepared.steps[-1][1].hidden_size == 7


def test_checkpoint_directory_is_per_configuration(tmp_path):
    first = ddp_lstm.checkpoint_directory(tmp_path, "sp500-lstm", "a" * 64)
    second = ddp_lstm.checkpoint_directory(tmp_path, "sp500-lstm", "b" * 64)
    assert first.parent == second.parent == tmp_path / "sp500-lstm" / "checkpoints"
    assert first != second


# --- the search protocol between ranks, with rank 1 simulated in this process -----------


class _TwoRankFake:
    """Plays rank 1 for rank 0's collectives: it takes every second trial of each broadcast batch."""

    def __init__(self, evaluate):
        self.evaluate = evaluate
        self.broadcasts = []
        self.claims: dict[str, int] = {}

    def broadcast_object(self, value, source=0, *, long_wait=False):
        self.broadcasts.append(value)
        return value

    def claim_next(self, key):
        # Rank 0 gets 0, 2, 4, ...: rank 1 took the odd positions in between.
        value = self.claims.get(key, 0)
        self.claims[key] = value + 2
        return value

    def all_gather_objects(self, value, *, long_wait=False):
        batch = self.broadcasts[-1].params
        rank_one = [(index, self.evaluate(batch[index])) for index in range(1, len(batch), 2)]
        return [value, rank_one]


def _search_config(method: str, iterations: int):
    from quanttrain.trainer.config import TrainingJobConfig

    return TrainingJobConfig.model_validate({
        "strategy": {"name": "s", "modelType": "RANDOM_FOREST", "predictionTarget": "PRICE_DIRECTION",
                     "trainingDataset": "x.csv", "modelPath": "s", "confidenceThreshold": 0.55,
                     "trainingWindowDays": 365, "predictionHorizonMinutes": 1440},
        "training": {"hyperparameterOptimization": method, "maxOptimizationIterations": iterations,
                     "cvFolds": 2, "randomSeed": 3,
                     "searchSpace": {"n_estimators": [5, 10], "max_depth": {"low": 2, "high": 4}}},
        "features": {"targetVariable": "direction", "featureColumns": ["close"],
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
    })


def _search_inputs():
    from sklearn.ensemble import RandomForestClassifier

    from quanttrain.trainer.splits import WalkForwardSplit

    X, y = _rows(120)
    factory = lambda params: RandomForestClassifier(random_state=0, **params)  # noqa: E731
    return X, y, WalkForwardSplit(2), factory


def _run_as_rank_zero(monkeypatch, config):
    import functools

    from quanttrain.trainer import distributed_search, search

    X, y, cv, factory = _search_inputs()
    evaluate = functools.partial(search.evaluate_params, X=X, y=y, cv=cv, estimator_factory=factory,
                                 metric=config.training.scoring_metric)
    fake = _TwoRankFake(evaluate)
    monkeypatch.setattr(distributed, "_active", distributed.DistributedContext(rank=0, world_size=2))
    monkeypatch.setattr(distributed, "broadcast_object", fake.broadcast_object)
    monkeypatch.setattr(distributed, "all_gather_objects", fake.all_gather_objects)
    monkeypatch.setattr(distributed, "claim_next", fake.claim_next)
    result = distributed_search.run_distributed_search(config, X, y, cv=cv, estimator_factory=factory)
    return result, fake


def test_bayesian_search_asks_one_point_per_rank(monkeypatch):
    from quanttrain.trainer import distributed_search

    result, fake = _run_as_rank_zero(monkeypatch, _search_config("BAYESIAN", 6))
    batches = [message.params for message in fake.broadcasts if isinstance(message, distributed_search._Batch)]
    assert [len(batch) for batch in batches] == [2, 2, 2]
    assert [trial.number for trial in result.trials] == [1, 2, 3, 4, 5, 6]


def test_random_search_batches_four_trials_per_rank(monkeypatch):
    from quanttrain.trainer import distributed_search

    result, fake = _run_as_rank_zero(monkeypatch, _search_config("RANDOM_SEARCH", 6))
    batches = [message.params for message in fake.broadcasts if isinstance(message, distributed_search._Batch)]
    assert [len(batch) for batch in batches] == [6]
    assert [trial.number for trial in result.trials] == [1, 2, 3, 4, 5, 6]


def test_claims_share_out_a_batch_once():
    keys = [distributed.claim_next("claims-test") for _ in range(3)]
    assert keys == [0, 1, 2]


def test_spread_search_has_single_process_form(monkeypatch):
    from quanttrain.trainer import search

    config = _search_config("RANDOM_SEARCH", 5)
    X, y, cv, factory = _search_inputs()
    single = search.run_search(config, X, y, cv=cv, estimator_factory=factory)
    spread, fake = _run_as_rank_zero(monkeypatch, config)
    assert spread.to_dict().keys() == single.to_dict().keys()
    assert [trial.params for trial in spread.trials] == [trial.params for trial in single.trials]
    assert [trial.fold_scores for trial in spread.trials] == [trial.fold_scores for trial in single.trials]
    assert fake.broadcasts[-1].result is spread, "the other ranks receive rank 0's result"


def test_follower_evaluates_its_share(monkeypatch):
    from quanttrain.trainer import distributed_search

    messages = iter([distributed_search._Batch([{"a": 0}, {"a": 1}, {"a": 2}], "key-1"),
                     distributed_search._Outcome(result="done")])
    claims = iter([1, 3])
    gathered = []
    monkeypatch.setattr(distributed, "_active", distributed.DistributedContext(rank=1, world_size=2))
    monkeypatch.setattr(distributed, "claim_next", lambda key: next(claims))
    monkeypatch.setattr(distributed, "broadcast_object", lambda value, source=0, long_wait=False: next(messages))
    monkeypatch.setattr(distributed, "all_gather_objects",
                        lambda value, long_wait=False: gathered.append(value) or [[], value])
    assert distributed_search.follow(lambda params: params["a"] * 10) == "done"
    assert gathered == [[(1, 10)]]


def test_follower_raises_rank_zero_error(monkeypatch):
    from quanttrain.trainer import distributed_search

    monkeypatch.setattr(distributed, "_active", distributed.DistributedContext(rank=1, world_size=2))
    monkeypatch.setattr(distributed, "broadcast_object",
                        lambda value, source=0, long_wait=False: distributed_search._Outcome(error="SearchError: boom"))
    with pytest.raises(distributed_search.PrimarySearchError, match="the search failed on rank 0: SearchError: boom"):
        distributed_search.follow(lambda params: None)
