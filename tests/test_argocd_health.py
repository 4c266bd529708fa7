"""The chart's Argo CD health check, run with Lua 5.1 (the dialect of Argo CD's gopher-lua) on MLTrainingJobs.

The statuses come from the operator's own status logic, so the check reads
exactly the fields and conditions the operator writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import lua51

from quanttrain.operator import status as job_status
from quanttrain.trainer.summary import (
    EXIT_CONFIG_ERROR,
    Evaluation,
    Gate,
    ModelReference,
    TrainingSummary,
)

HEALTH_LUA = Path(__file__).resolve().parent.parent / "helm" / "quanttrain" / "files" / "argocd-health.lua"
NOW = "2026-03-02T10:00:00Z"


def run_health_check(resource: dict[str, Any]) -> dict[str, str]:
    """Run the health check on one resource in a Lua runtime without io, os or module loading."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    sandbox = runtime.globals()
    for name in ("io", "os", "package", "require", "dofile", "loadfile", "debug"):
        sandbox[name] = None
    sandbox.obj = to_lua(runtime, resource)
    result = runtime.execute(HEALTH_LUA.read_text())
    return dict(result.items())


def to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({key: to_lua(runtime, item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return runtime.table_from([to_lua(runtime, item) for item in value])
    return value


def training_job(status: dict[str, Any] | None = None, *, suspend: bool = False, generation: int = 1) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "apiVersion": "quanttrain.io/v1alpha1",
        "kind": "MLTrainingJob",
        "metadata": {"name": "momentum-xgb", "namespace": "research", "generation": generation},
        "spec": {"strategy": {"name": "Momentum XGB", "modelType": "XGB"}, "runPolicy": {"suspend": suspend}},
    }
    if status is not None:
        resource["status"] = status
    return resource


def observe(job: job_status.JobFacts | None, *pods: job_status.PodFacts, **fields: Any) -> dict[str, Any]:
    """Return the status the operator computes for a fresh resource and the given observation."""
    seen = job_status.Observation(generation=1, job=job, pods=pods, now=NOW, **fields)
    return job_status.desired_status({}, seen)


def summary_message(accuracy: float, f1_score: float) -> str:
    summary = TrainingSummary(
        strategy="Momentum XGB",
        model_type="XGB",
        evaluation=Evaluation(
            accuracy=accuracy, precision=0.55, recall=0.56, f1_score=f1_score,
            confusion_matrix=[[40, 20], [25, 45]], classes=["DOWN", "UP"], test_rows=130,
        ),
        model=ModelReference(uri="file:///registry/momentum-xgb/3", version="3", sha256="0" * 64),
        gate=Gate(passed=True),
        duration_seconds=42.0,
    )
    return summary.to_message()


def created_job(**fields: Any) -> job_status.JobFacts:
    return job_status.JobFacts(name="momentum-xgb", suspended=False, **fields)


def test_new_job_without_status_is_progressing() -> None:
    health = run_health_check(training_job())
    assert health["status"] == "Progressing"
    assert "operator" in health["message"]


def test_pending_job_is_progressing() -> None:
    status = observe(created_job())
    assert status["phase"] == "Pending"
    assert run_health_check(training_job(status))["status"] == "Progressing"


def test_running_job_is_progressing_with_pod_count() -> None:
    pod = job_status.PodFacts(name="momentum-xgb-0-abcde", index=0, phase="Running", started_at=NOW)
    status = observe(created_job(active=1, start_time=NOW), pod)
    assert status["phase"] == "Running"
    health = run_health_check(training_job(status))
    assert health == {"status": "Progressing", "message": "1 of 1 pods running"}


def test_succeeded_job_is_healthy_with_its_metrics() -> None:
    pod = job_status.PodFacts(
        name="momentum-xgb-0-abcde", index=0, phase="Succeeded", exit_code=0, message=summary_message(0.6123, 0.5987)
    )
    status = observe(created_job(succeeded=1, complete=True, completion_time=NOW), pod)
    assert status["phase"] == "Succeeded"
    health = run_health_check(training_job(status))
    assert health["status"] == "Healthy"
    assert health["message"] == "Training succeeded: accuracy 0.6123, F1 0.5987"


def test_failed_job_is_degraded_with_the_trainer_message() -> None:
    pod = job_status.PodFacts(
        name="momentum-xgb-0-abcde", index=0, phase="Failed", exit_code=EXIT_CONFIG_ERROR,
        message="Traceback ...\nConfigError: spec.features.trainSplitRatio: 0.95 leaves no test rows",
    )
    status = observe(created_job(failed=1, failed_reason="PodFailurePolicy"), pod)
    assert status["phase"] == "Failed"
    health = run_health_check(training_job(status))
    assert health["status"] == "Degraded"
    assert health["message"] == status["message"]
    assert "trainSplitRatio" in health["message"]


def test_failed_job_without_message_uses_the_failed_condition() -> None:
    status = {
        "phase": "Failed",
        "conditions": [{"type": "Failed", "status": "True", "reason": "InvalidSpec", "message": "spec.image: invalid"}],
    }
    health = run_health_check(training_job(status))
    assert health == {"status": "Degraded", "message": "spec.image: invalid"}


def test_suspended_job_is_suspended() -> None:
    status = observe(job_status.JobFacts(name="momentum-xgb", suspended=True))
    assert status["phase"] == "Pending"
    health = run_health_check(training_job(status, suspend=True))
    assert health["status"] == "Suspended"
    assert health["message"] == "runPolicy.suspend is true"


def test_queued_job_without_status_is_suspended() -> None:
    # Kueue's webhook sets runPolicy.suspend at admission, before the operator writes any status.
    health = run_health_check(training_job(suspend=True))
    assert health["status"] == "Suspended"


def test_resumed_job_is_progressing_again() -> None:
    suspended = observe(job_status.JobFacts(name="momentum-xgb", suspended=True))
    seen = job_status.Observation(generation=2, job=created_job(), now=NOW)
    resumed = job_status.desired_status(suspended, seen)
    assert job_status.condition(resumed, job_status.ConditionType.SUSPENDED)["status"] == "False"
    assert run_health_check(training_job(resumed, generation=2))["status"] == "Progressing"


def test_rejected_spec_change_is_degraded() -> None:
    status = observe(created_job(), rejected_paths=("spec.model.modelType",))
    health = run_health_check(training_job(status, generation=2))
    assert health["status"] == "Degraded"
    assert "spec.model.modelType" in health["message"]


def test_terminal_phase_wins_over_suspend() -> None:
    status = {"phase": "Succeeded", "evaluation": {"accuracy": 0.7, "f1Score": 0.65}}
    assert run_health_check(training_job(status, suspend=True))["status"] == "Healthy"


def test_unknown_phase_is_unknown() -> None:
    health = run_health_check(training_job({"phase": "Evicted"}))
    assert health == {"status": "Unknown", "message": "Unknown phase Evicted"}


@pytest.mark.parametrize("phase", ["Pending", "Running", "Succeeded", "Failed"])
def test_every_phase_maps_to_an_argocd_status(phase: str) -> None:
    allowed = {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert run_health_check(training_job({"phase": phase}))["status"] in allowed
