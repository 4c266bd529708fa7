"""The real kopf operator against the Kubernetes emulator; the test plays the Job controller."""

from __future__ import annotations

import pytest

from kube_emulator import CONFIGMAPS, JOBS, MLTJ, PODS, SERVICES, ClusterEmulator, JobController, status_of
from operator_fixtures import NAMESPACE, controller, emulator, job_spec, kubeconfig, operator, resource, running_operator  # noqa: F401
from quanttrain.trainer.summary import Evaluation, Gate, ModelReference, TrainingSummary

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def summary(accuracy: float = 0.61, passed: bool = True, message: str = "") -> TrainingSummary:
    return TrainingSummary(
        strategy="SP500 Momentum RF",
        model_type="RANDOM_FOREST",
        evaluation=Evaluation(
            accuracy=accuracy, precision=0.6, recall=0.61, f1_score=0.605, roc_auc=0.64,
            confusion_matrix=[[40, 20], [19, 21]], classes=["DOWN", "UP"], test_rows=100,
        ),
        best_hyperparameters={"n_estimators": 300, "max_depth": 6},
        model=ModelReference(uri="file:///registry/sp500-momentum-rf/3", version="3", sha256="ab" * 32),
        gate=Gate(passed=passed, reasons=[] if passed else [f"accuracy {accuracy} is below 0.55"]),
        duration_seconds=42.0,
        message=message,
    )


def phase(emulator: ClusterEmulator, name: str) -> str | None:
    return status_of(emulator.stored(MLTJ, NAMESPACE, name)).get("phase")


async def test_single_node_job_succeeds(emulator, operator, controller: JobController):
    await controller.create(MLTJ, resource("rf"))

    await emulator.wait_for(lambda: phase(emulator, "rf") == "Pending", what="phase Pending")
    pod = await controller.start_pod("rf", 0)
    await emulator.wait_for(lambda: phase(emulator, "rf") == "Running", what="phase Running")
    await controller.finish_pod(pod, 0, summary().to_message())
    await controller.complete_job("rf", succeeded=1)
    await emulator.wait_for(lambda: phase(emulator, "rf") == "Succeeded", what="phase Succeeded")

    status = status_of(emulator.stored(MLTJ, NAMESPACE, "rf"))
    assert status["evaluation"]["accuracy"] == 0.61
