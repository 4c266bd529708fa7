"""Fixtures for running the real operator against the emulator: import them into a test module."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import kubernetes.config.kube_config
import pytest
import pytest_asyncio
import yaml
from kopf.testing import KopfRunner

from kube_emulator import CONFIGMAPS, JOBS, MLTJ, PODS, ClusterEmulator, JobController

NAMESPACE = "quant"
# Watches the operator opens before it handles anything. Objects created earlier are listed anyway,
# but waiting for the watches keeps each test's first events in a known order.
WATCHED = (MLTJ, JOBS, PODS, CONFIGMAPS)


def job_spec(**overrides: Any) -> dict[str, Any]:
    """A valid MLTrainingJob spec; keyword arguments replace top-level sections."""
    spec: dict[str, Any] = {
        "strategy": {
            "name": "SP500 Momentum RF",
            "modelType": "RANDOM_FOREST",
            "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "sp500.csv",
            "modelPath": "sp500-momentum-rf",
            "confidenceThreshold": 0.6,
            "trainingWindowDays": 180,
            "predictionHorizonMinutes": 1440,
        },
        "training": {"maxTrainingTimeMinutes": 30, "minAccuracyThreshold": 0.5},
        "features": {
            "targetVariable": "direction",
            "featureColumns": ["rsi_14", "close"],
            "trainSplitRatio": 0.7,
            "validationSplitRatio": 0.15,
        },
        "indicators": [{"name": "rsi_14", "type": "TECHNICAL", "calculationMethod": "RSI", "lookbackPeriod": 14}],
    }
    spec.update(overrides)
    return spec


def resource(name: str, spec: dict[str, Any] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "quanttrain.io/v1alpha1", "kind": "MLTrainingJob", "metadata": metadata,
            "spec": spec or job_spec()}


@pytest_asyncio.fixture()
async def emulator() -> AsyncIterator[ClusterEmulator]:
    async with ClusterEmulator() as handler, kmock.Server(handler):
        yield handler


@pytest.fixture()
def kubeconfig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(path))
    # NB: the client library reads $KUBECONFIG once, when it is imported.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    # Quick retries keep the error-injection tests short.
    monkeypatch.setenv("QUANTTRAIN_API_BACKOFF_SECONDS", "0.2")
    monkeypatch.setenv("QUANTTRAIN_API_MAX_BACKOFF_SECONDS", "1")
    monkeypatch.setenv("QUANTTRAIN_TRAINER_IMAGE", "registry.example/quanttrain-trainer:test")
    return path


def write_kubeconfig(path: Path, server: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester", "namespace": NAMESPACE}}],
    }
    path.write_text(yaml.safe_dump(config))


@contextlib.asynccontextmanager
async def running_operator(emulator: ClusterEmulator, kubeconfig: Path) -> AsyncIterator[KopfRunner]:
    """Run the operator in kopf's test runner thread until the block ends; wait for its watches first."""
    write_kubeconfig(kubeconfig, str(emulator.url).rstrip("/"))
    args = ["run", "--standalone", f"--namespace={NAMESPACE}", "-m", "quanttrain.operator.handlers"]
    runner = KopfRunner(args, timeout=30)
    await asyncio.to_thread(runner.__enter__)
    try:
        for resource_name in WATCHED:
            await emulator.wait_for(lambda: emulator.watched(resource_name), timeout=15, what=f"a watch on {resource_name}")
        yield runner
    finally:
        # NB: stop the thread off the event loop, which keeps serving the operator's last requests.
        await asyncio.to_thread(runner.__exit__, None, None, None)


@pytest_asyncio.fixture()
async def operator(emulator: ClusterEmulator, kubeconfig: Path) -> AsyncIterator[KopfRunner]:
    async with running_operator(emulator, kubeconfig) as runner:
        yield runner


@pytest.fixture()
def controller(emulator: ClusterEmulator) -> JobController:
    return JobController(emulator, NAMESPACE)
