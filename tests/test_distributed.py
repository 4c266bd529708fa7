"""Unit tests of the distributed helpers, checkpoints and the DDP loop in one process.

The multi-process behaviour (real torchrun ranks) is in test_torchrun.py.
"""

from __future__ import annotations

import pickle

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


def test_remove_checkpoints_deletes_the_folder(tmp_path):
    folder = tmp_path / "run"
    checkpoints.save_checkpoint(folder, 1, _state(1.0))
    checkpoints.remove_checkpoints(folder)
    assert not folder.exists()


def test_fingerprint_changes_with_the_facts():
    assert checkpoints.fingerprint(hidden=32, rows=100) == checkpoints.fingerprint(rows=100, hidden=32)
    assert checkpoints.fingerprint(hidden=32, rows=100) != checkpoints.fingerprint(hidden=64, rows=100)


# --- the DDP loop in one process ---------------------------------------------------------


class _TinyLSTM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 8, batch_first=True)
        self.dropout = torch.nn.Dropout(0.2)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, inputs):
        outputs, _ = self.lstm(inputs)
        return self.head(self.dropout(outputs[:, -1]))


def _windows(count: int = 240):
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(count, 6, 3, generator=generator)
    labels = (inputs[:, -1, 0] > 0).long()
    split = count * 3 // 4
    return (inputs[:split], labels[:split]), (inputs[split:], labels[split:])


def _fresh_module():
    torch.manual_seed(0)
    return _TinyLSTM()


def test_sampler_gives_each_rank_only_training_windows():
    count = 21
    windows = (torch.zeros(count, 2, 1), torch.arange(count))
    settings = ddp_lstm.LoopSettings(batch_size=4)
    seen = []
    for rank in (0, 1):
        context = distributed.DistributedContext(rank=rank, world_size=2)
        loader, _ = ddp_lstm._train_loader(windows, settings, context)
        labels = torch.cat([batch_labels for _, batch_labels in loader]).tolist()
        assert labels[:-1] == sorted(labels[:-1]), "each rank sees its windows in time order"
        seen.append(labels)
    assert len(seen[0]) == len(seen[1]), "ranks must run the same number of steps"
    assert set(seen[0]) | set(seen[1]) == set(range(count))


def test_validation_share_splits_windows_without_overlap():
    windows = (torch.zeros(7, 2, 1), torch.arange(7))
    shares = [ddp_lstm._rank_share(windows, distributed.DistributedContext(rank=r, world_size=2))[1] for r in (0, 1)]
    assert sorted(torch.cat(shares).tolist()) == list(range(7))


def test_loop_stops_early_and_restores_best_weights():
    train, validation = _windows()
    module = _fresh_module()
    settings = ddp_lstm.LoopSettings(max_epochs=200, batch_size=32, learning_rate=0.05, patience=2)
    result = ddp_lstm.train_distributed(module, train, validation, settings)
    assert result.stopped_early
    assert result.epochs_run == result.best_epoch + 1 + settings.patience
    assert result.best_loss == min(result.validation_losses)
    restored = {key: value for key, value in module.state_dict().items()}
    assert all(torch.equal(restored[key], result.best_state[key]) for key in restored)


def test_loop_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    train, validation = _windows()
    common = dict(batch_size=32, early_stopping=False, checkpoint_every=2, fingerprint="run-a")

    uninterrupted = ddp_lstm.train_distributed(
        _fresh_module(), train, validation, ddp_lstm.LoopSettings(max_epochs=6, **common)
    )
    ddp_lstm.train_distributed(
        _fresh_module(), train, validation,
        ddp_lstm.LoopSettings(max_epochs=4, checkpoint_dir=str(tmp_path), **common),
    )
    resumed = ddp_lstm.train_distributed(
        _fresh_module(), train, validation,
        ddp_lstm.LoopSettings(max_epochs=6, checkpoint_dir=str(tmp_path), **common),
    )
    assert resumed.start_epoch == 4
    assert resumed.validation_losses == pytest.approx(uninterrupted.validation_losses, rel=1e-6)
    for key, value in uninterrupted.best_state.items():
        assert torch.allclose(resumed.best_state[key], value, atol=1e-6), key


def test_loop_stops_when_the_deadline_has_passed():
    train, validation = _windows()
    settings = ddp_lstm.LoopSettings(max_epochs=50, batch_size=32, early_stopping=False, deadline=0.0)
    result = ddp_lstm.train_distributed(_fresh_module(), train, validation, settings)
    assert result.epochs_run == 1
    assert result.stopped_early


def test_loop_settings_reject_invalid_values():
    with pytest.raises(ValueError, match="checkpoint_every must be at least 1 epoch, got 0"):
        ddp_lstm.LoopSettings(checkpoint_every=0)
