"""The trainer under real torchrun: two nodes rendezvous on 127.0.0.1 with the gloo backend.

Each test starts two torchrun agents as separate processes (``--nnodes=2
--nproc-per-node=1``), as two pods would, running ``python -m
quanttrain.trainer`` on the S&P 500 daily bars that ship with ``arch``.  The
first agent is started alone and hosts the c10d rendezvous store; the tests
stop or kill only the second one.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from torchrun_support import child_environment, free_port

pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# Seconds a collective waits for a silent rank in these tests (600 in production).
COLLECTIVE_TIMEOUT = 8
# LSTM epochs: enough that the final fit is still running when a test interrupts it.
MAX_EPOCHS = 100
# Upper bound on any one wait for a torchrun node, so a broken test fails instead of hanging.
NODE_WAIT = 150


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from quanttrain.trainer.market_data import export_market_data

    folder = tmp_path_factory.mktemp("torchrun")
    export_market_data(folder)
    return folder


def _write_spec(folder: Path, name: str, model_type: str, training: dict, window_days: int = 120) -> Path:
    spec = {
        "strategy": {
            "name": name, "modelType": model_type, "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "sp500_daily.csv", "modelPath": name, "confidenceThreshold": 0.55,
            "trainingWindowDays": window_days, "predictionHorizonMinutes": 1440,
            "featureConfiguration": {"sequenceLength": 5},
        },
        "training": {"cvFolds": 2, "overfittingDetection": False, "randomSeed": 11, **training},
        "features": {"targetVariable": "direction", "featureColumns": ["rsi", "close"],
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "indicators": [{"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "lookbackPeriod": 14}],
        "distributed": {"enabled": True, "nodes": 2, "procsPerNode": 1},
    }
    document = {"apiVersion": "quanttrain.io/v1alpha1", "kind": "MLTrainingJob",
                "metadata": {"name": name}, "spec": spec}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _lstm_spec(folder: Path, name: str, max_epochs: int) -> Path:
    # No validation windows: every fit runs all max_epochs, so the final fit lasts long enough to interrupt.
    parameters = {"hidden_size": 8, "batch_size": 16, "max_epochs": max_epochs, "checkpoint_every": 2,
                  "validation_fraction": 0.0}
    return _write_spec(folder, name, "LSTM", {
        "hyperparameterOptimization": "NONE", "modelParameters": parameters,
        "earlyStopping": False, "checkpoint": True,
    }, window_days=60)


class Node:
    """One torchrun agent (a pod) with its worker, logging to a file."""

    def __init__(self, folder: Path, label: str, spec: Path, endpoint: str, run_id: str) -> None:
        self.label = label
        self.log_path = folder / f"node-{label}.log"
        self.output = folder / f"result-{label}.json"
        self.termination_log = folder / f"termination-{label}.txt"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}",
            "--max-restarts=0", "--monitor-interval=0.5",
            "-m", "quanttrain.trainer", "--spec", str(spec), "--registry", str(folder / "registry"),
            "--output", str(self.output), "--termination-log", str(self.termination_log),
        ]
        with open(self.log_path, "ab") as log:
            # A new session, so the test can signal the agent and its worker together.
            self.process = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                                            env=child_environment(COLLECTIVE_TIMEOUT), start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = NODE_WAIT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            pytest.fail(f"torchrun node {self.label} did not finish within {timeout} s:\n{self.log()[-3000:]}")

    def signal(self, number: int) -> None:
        """Signal the agent and its workers, as when a pod is deleted or its node freezes."""
        # torchrun starts each worker in a session of its own, so a process group would miss it.
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            try:
                os.kill(pid, number)
            except ProcessLookupError:
                pass


def _descendants(pid: int) -> list[int]:
    """Process ids of every descendant of ``pid``, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


@pytest.fixture
def cluster(workdir):
    """Start pairs of torchrun nodes; kill whatever is still running at the end of the test."""
    started: list[Node] = []

    def start(spec: Path, labels: tuple[str, str], run_id: str | None = None) -> list[Node]:
        port = free_port()
        endpoint = f"127.0.0.1:{port}"
        run_id = run_id or str(uuid.uuid4())
        first = Node(workdir, labels[0], spec, endpoint, run_id)
        started.append(first)
        _wait_for_port(port, first)
        second = Node(workdir, labels[1], spec, endpoint, run_id)
        started.append(second)
        return [first, second]

    yield start
    for node in started:
        node.signal(signal.SIGKILL)
    for node in started:
        node.process.wait(timeout=30)


def _wait_for_port(port: int, node: Node, timeout: float = 60) -> None:
    """Wait until the first agent listens, so that it is the one that hosts the rendezvous store."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            pytest.fail(f"torchrun node {node.label} exited early:\n{node.log()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"torchrun node {node.label} did not open the rendezvous port {port} within {timeout} s")


def _wait_for_checkpoint(registry: Path, minimum_epoch: int, nodes: list[Node], timeout: float = NODE_WAIT) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        epochs = [int(match.group(1)) for path in registry.glob("*/checkpoints/*/epoch-*.pt")
                  if (match := re.search(r"epoch-(\d+)\.pt$", path.name))]
        if epochs and max(epochs) >= minimum_epoch:
            return max(epochs)
        for node in nodes:
            if node.process.poll() is not None:
                pytest.fail(f"node {node.label} exited before a checkpoint appeared:\n{node.log()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"no checkpoint of epoch {minimum_epoch} or later appeared under {registry} in {timeout} s")


def _failure_logged_at(node: Node) -> float:
    """The time at which the node's worker logged a distributed failure; fails the test when it did not."""
    for line in node.log().splitlines():
        if "distributed training failed while" in line:
            # The trainer logs local time as "2026-01-02 03:04:05,678" at the start of each line.
            return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    pytest.fail(f"node {node.label} logged no distributed failure:\n{node.log()[-3000:]}")


def _primary(nodes: list[Node]) -> Node:
    primaries = [node for node in nodes if "as rank 0/2" in node.log()]
    assert len(primaries) == 1, "exactly one node must run rank 0"
    return primaries[0]


def _field_paths(value, prefix: str = "") -> set[str]:
    """Every key path of a JSON document; list items share the path of their list."""
    paths = {prefix} if prefix else set()
    if isinstance(value, dict):
        for key, item in value.items():
            paths |= _field_paths(item, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list):
        for item in value:
            paths |= _field_paths(item, f"{prefix}[]")
    return paths


# --- LSTM with DistributedDataParallel: a lost node, then resumption ---------------------


def test_lost_node_fails_then_restart_resumes(workdir, cluster):
    spec = _lstm_spec(workdir, "sp500-lstm", max_epochs=MAX_EPOCHS)
    run_id = str(uuid.uuid4())
    nodes = cluster(spec, ("a1", "b1"), run_id)
    saved_epoch = _wait_for_checkpoint(workdir / "registry", 4, nodes)

    killed_at = time.time()
    nodes[1].signal(signal.SIGKILL)
    survivor_code = nodes[0].wait()
    assert survivor_code != 0
    assert _failure_logged_at(nodes[0]) - killed_at < COLLECTIVE_TIMEOUT + 10
    assert not nodes[0].output.exists()
    assert not nodes[1].output.exists()

    # The Job restarts both pods with the same rendezvous id (the MLTrainingJob's uid).
    restarted = cluster(spec, ("a2", "b2"), run_id)
    codes = [node.wait() for node in restarted]
    assert codes == [0, 0], [node.log()[-3000:] for node in restarted]
    primary = _primary(restarted)
    pattern = rf"resuming LSTM training from the checkpoint in \S+ after epoch (\d+) of {MAX_EPOCHS}"
    resumed = re.search(pattern, primary.log())
    assert resumed is not None, primary.log()[-3000:]
    assert int(resumed.group(1)) >= saved_epoch

    # Only rank 0 writes the result, the termination message and the model; checkpoints go once it is saved.
    other = restarted[1] if primary is restarted[0] else restarted[0]
    assert primary.output.is_file()
    assert primary.termination_log.is_file()
    assert not other.output.exists()
    assert not other.termination_log.exists()
    registry = workdir / "registry" / "sp500-lstm"
    assert (registry / "1" / "model.pt").is_file()
    assert not (registry / "2").exists()
    assert not (registry / "checkpoints").exists()
    assert json.loads(primary.termination_log.read_text(encoding="utf-8"))["modelType"] == "LSTM"


# --- hyperparameter search spread over the ranks -----------------------------------------


SEARCHES = {
    "RANDOM_FOREST": {"n_estimators": [10, 20], "max_depth": {"low": 2, "high": 5}},
    "XGB": {"n_estimators": [10, 20], "max_depth": {"low": 2, "high": 4}},
}


@pytest.mark.parametrize("model_type", sorted(SEARCHES))
def test_search_matches_single_process(workdir, cluster, model_type):
    training = {
        "hyperparameterOptimization": "RANDOM_SEARCH", "maxOptimizationIterations": 4,
        "searchSpace": SEARCHES[model_type],
    }
    spec = _write_spec(workdir, f"sp500-{model_type.lower().replace('_', '-')}", model_type, training)
    nodes = cluster(spec, (f"{model_type}-a", f"{model_type}-b"))
    single_output = workdir / f"result-{model_type}-single.json"
    single = subprocess.run(
        [sys.executable, "-m", "quanttrain.trainer", "--spec", str(spec), "--registry", str(workdir / "registry"),
         "--output", str(single_output), "--termination-log", str(workdir / f"termination-{model_type}-single.txt")],
        cwd=workdir, env=child_environment(COLLECTIVE_TIMEOUT), capture_output=True, text=True, timeout=NODE_WAIT, check=False,
    )
    codes = [node.wait() for node in nodes]
    assert single.returncode == 0, single.stderr[-3000:]
    assert codes == [0, 0], [node.log()[-3000:] for node in nodes]

    primary = _primary(nodes)
    assert "spreading the search over 2 ranks" in primary.log()
    distributed_result = json.loads(primary.output.read_text(encoding="utf-8"))
    single_result = json.loads(single_output.read_text(encoding="utf-8"))
    assert _field_paths(distributed_result) == _field_paths(single_result)

    def trials(result):
        return [(trial["number"], trial["params"], trial["fold_scores"]) for trial in result["search"]["trials"]]

    assert trials(distributed_result) == trials(single_result)
    assert distributed_result["search"]["best_params"] == single_result["search"]["best_params"]
    other = nodes[1] if primary is nodes[0] else nodes[0]
    assert "fitting the model" not in other.log(), "the final tree model trains on rank 0 alone"


# --- a rank that stops responding -----------------------------------------------------------


def test_hung_rank_fails_within_timeout(workdir, cluster):
    spec = _lstm_spec(workdir, "sp500-lstm-hang", max_epochs=MAX_EPOCHS)
    nodes = cluster(spec, ("hang-a", "hang-b"))
    _wait_for_checkpoint(workdir / "registry", 2, nodes)

    stopped_at = time.time()
    nodes[1].signal(signal.SIGSTOP)
    code = nodes[0].wait()
    nodes[1].signal(signal.SIGKILL)

    assert code != 0
    assert _failure_logged_at(nodes[0]) - stopped_at < COLLECTIVE_TIMEOUT + 10
    assert f"collective timeout {COLLECTIVE_TIMEOUT} s" in nodes[0].log()
