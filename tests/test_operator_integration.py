"""The real kopf operator against the Kubernetes emulator; the test plays the Job controller."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import kmock
import pytest

from kube_emulator import CONFIGMAPS, EVENTS, JOBS, MLTJ, PODS, SERVICES, ClusterEmulator, JobController, status_of
from operator_fixtures import (  # noqa: F401  (fixtures)
    NAMESPACE, controller, emulator, job_spec, kubeconfig, operator, resource, running_operator, write_kubeconfig,
)
from quanttrain.trainer.summary import Evaluation, Gate, ModelReference, TrainingSummary

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def summary(accuracy: float = 0.61, passed: bool = True, message: str = "") -> str:
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
    ).to_message()


def status(emulator: ClusterEmulator, name: str) -> dict:
    return status_of(emulator.stored(MLTJ, NAMESPACE, name))


def phase_is(emulator: ClusterEmulator, name: str, phase: str):
    return lambda: status(emulator, name).get("phase") == phase


def condition(emulator: ClusterEmulator, name: str, kind: str) -> dict:
    return next((c for c in status(emulator, name).get("conditions", []) if c["type"] == kind), {})


def event_reasons(emulator: ClusterEmulator, name: str) -> list[str]:
    return [event["reason"] for event in emulator.stored_all(EVENTS, NAMESPACE)
            if event.get("involvedObject", {}).get("name") == name and event["involvedObject"].get("kind") == "MLTrainingJob"]


async def wait_phase(emulator: ClusterEmulator, name: str, phase: str, timeout: float = 10.0) -> dict:
    await emulator.wait_for(phase_is(emulator, name, phase), timeout=timeout, what=f"{name} in phase {phase}")
    return status(emulator, name)


async def launched(emulator: ClusterEmulator, controller: JobController, name: str, **spec) -> dict:
    await controller.create(MLTJ, resource(name, job_spec(**spec)))
    return await emulator.wait_for(lambda: emulator.stored(JOBS, NAMESPACE, name), what=f"Job {name}")


async def test_single_node_job_succeeds(emulator, operator, controller):
    job = await launched(emulator, controller, "rf")
    assert job["spec"]["completions"] == 1
    pending = await wait_phase(emulator, "rf", "Pending")
    assert condition(emulator, "rf", "Created")["reason"] == "JobCreated"

    pod = await controller.start_pod("rf", 0)
    running = await wait_phase(emulator, "rf", "Running")
    await controller.finish_pod(pod, 0, summary(0.61))
    await controller.complete_job("rf", succeeded=1)
    final = await wait_phase(emulator, "rf", "Succeeded")

    assert pending["observedGeneration"] == 1
    assert "startTime" in running
    assert final["evaluation"]["accuracy"] == 0.61
    assert final["evaluation"]["f1Score"] == 0.605
    assert final["bestHyperparameters"] == {"n_estimators": 300, "max_depth": 6}
    assert final["model"]["version"] == "3"
    assert "completionTime" in final
    assert condition(emulator, "rf", "Succeeded")["reason"] == "TrainingSucceeded"


async def test_children_exist_owned_and_labelled(emulator, operator, controller):
    await launched(emulator, controller, "rf")
    uid = emulator.stored(MLTJ, NAMESPACE, "rf")["metadata"]["uid"]
    children = [emulator.stored(JOBS, NAMESPACE, "rf"), emulator.stored(SERVICES, NAMESPACE, "rf-workers"),
                emulator.stored(CONFIGMAPS, NAMESPACE, "rf")]
    for child in children:
        assert child["metadata"]["ownerReferences"][0]["uid"] == uid
        assert child["metadata"]["labels"]["quanttrain.io/job-name"] == "rf"
    await emulator.wait_for(lambda: "JobCreated" in event_reasons(emulator, "rf"), what="a JobCreated event")


async def test_pods_get_their_replica_index_label(emulator, operator, controller):
    await launched(emulator, controller, "rf")
    foreign = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "someone-else", "namespace": NAMESPACE,
        "annotations": {"batch.kubernetes.io/job-completion-index": "0"}}, "spec": {"containers": []}}
    await controller.create(PODS, foreign)
    pod = await controller.start_pod("rf", 0)
    labelled = await emulator.wait_for(
        lambda: emulator.stored(PODS, NAMESPACE, pod)["metadata"]["labels"].get("quanttrain.io/replica-index"),
        what="the replica-index label",
    )
    assert labelled == "0"
    assert "labels" not in emulator.stored(PODS, NAMESPACE, "someone-else")["metadata"]


async def test_distributed_job_uses_index_zero_summary(emulator, operator, controller):
    job = await launched(emulator, controller, "ddp", distributed={"enabled": True, "nodes": 2, "procsPerNode": 2})
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "quanttrain.trainer.launcher"]
    assert "--nnodes=2" in command
    assert "--rdzv-endpoint=ddp-0.ddp-workers.quant.svc:29500" in command
    assert job["spec"]["parallelism"] == 2

    pods = [await controller.start_pod("ddp", index) for index in (0, 1)]
    await wait_phase(emulator, "ddp", "Running")
    await controller.finish_pod(pods[1], 0, summary(0.11))
    await controller.finish_pod(pods[0], 0, summary(0.72))
    await controller.complete_job("ddp", succeeded=2)
    final = await wait_phase(emulator, "ddp", "Succeeded")
    assert final["evaluation"]["accuracy"] == 0.72


async def test_pods_left_running_are_deleted_after_success(emulator, operator, controller):
    await launched(emulator, controller, "ddp", distributed={"enabled": True, "nodes": 2, "procsPerNode": 1})
    first, second = [await controller.start_pod("ddp", index) for index in (0, 1)]
    await controller.finish_pod(first, 0, summary())
    await controller.complete_job("ddp", succeeded=1)
    await wait_phase(emulator, "ddp", "Succeeded")
    await emulator.wait_for(lambda: emulator.stored(PODS, NAMESPACE, second) is None, what=f"pod {second} deleted")
    assert emulator.stored(PODS, NAMESPACE, first) is not None


async def test_trainer_failure_fails_after_backoff(emulator, operator, controller):
    await launched(emulator, controller, "rf")
    first = await controller.start_pod("rf", 0)
    await wait_phase(emulator, "rf", "Running")
    await controller.finish_pod(first, 1, "Traceback (most recent call last):\nRuntimeError: out of memory")
    await controller.set_job_status("rf", failed=1, active=0)
    second = await controller.start_pod("rf", 0)
    await emulator.wait_for(lambda: "1 failed pod(s) retried" in condition(emulator, "rf", "Running").get("message", ""),
                            what="the retry noted in the Running condition")
    assert status(emulator, "rf")["phase"] == "Running"

    await controller.finish_pod(second, 1, "Traceback (most recent call last):\nRuntimeError: out of memory again")
    await controller.fail_job("rf", failed=2)
    final = await wait_phase(emulator, "rf", "Failed")
    assert condition(emulator, "rf", "Failed")["reason"] == "TrainingFailed"
    assert final["message"] == f"pod {second} exited with code 1: RuntimeError: out of memory again"
    await emulator.wait_for(lambda: "TrainingFailed" in event_reasons(emulator, "rf"), what="a TrainingFailed event")


async def test_gate_failure_fails_with_gate_reason(emulator, operator, controller):
    await launched(emulator, controller, "rf")
    pod = await controller.start_pod("rf", 0)
    await controller.finish_pod(pod, 3, summary(0.41, passed=False, message="performance gate failed"))
    await controller.fail_job("rf", failed=1, reason="PodFailurePolicy")
    final = await wait_phase(emulator, "rf", "Failed")
    assert condition(emulator, "rf", "Failed")["reason"] == "GateFailed"
    assert final["evaluation"]["accuracy"] == 0.41
    assert final["gate"]["passed"] is False


async def test_bad_spec_fails_without_a_job(emulator, operator, controller):
    features = {**job_spec()["features"], "trainSplitRatio": 0.5, "validationSplitRatio": 0.1}
    await controller.create(MLTJ, resource("bad", job_spec(features=features)))
    final = await wait_phase(emulator, "bad", "Failed")
    assert condition(emulator, "bad", "Failed")["reason"] == "InvalidSpec"
    assert "spec.features.trainSplitRatio" in final["message"]
    assert "0.6" in final["message"]
    assert emulator.stored(JOBS, NAMESPACE, "bad") is None
    assert emulator.stored(CONFIGMAPS, NAMESPACE, "bad") is None


async def test_suspend_and_resume(emulator, operator, controller):
    job = await launched(emulator, controller, "rf", runPolicy={"suspend": True})
    assert job["spec"]["suspend"] is True
    await emulator.wait_for(lambda: condition(emulator, "rf", "Suspended").get("status") == "True", what="Suspended")
    assert status(emulator, "rf")["phase"] == "Pending"

    await controller.patch(MLTJ, "rf", {"spec": {"runPolicy": {"suspend": False}}})
    await emulator.wait_for(lambda: emulator.stored(JOBS, NAMESPACE, "rf")["spec"]["suspend"] is False, what="Job resumed")
    await emulator.wait_for(lambda: condition(emulator, "rf", "Suspended").get("reason") == "Resumed", what="Resumed")
    assert emulator.created_count(JOBS, NAMESPACE, "rf") == 1


async def test_immutable_spec_change_is_rejected(emulator, operator, controller):
    job = await launched(emulator, controller, "rf")
    await wait_phase(emulator, "rf", "Pending")
    await controller.patch(MLTJ, "rf", {"spec": {"strategy": {"modelType": "XGB"}}})
    rejected = await emulator.wait_for(
        lambda: condition(emulator, "rf", "SpecChangeRejected").get("status") == "True" and
        condition(emulator, "rf", "SpecChangeRejected"), what="SpecChangeRejected",
    )
    assert "spec.strategy.modelType" in rejected["message"]
    assert status(emulator, "rf")["observedGeneration"] == 2
    assert emulator.stored(JOBS, NAMESPACE, "rf")["spec"] == job["spec"]
    await emulator.wait_for(lambda: "ImmutableField" in event_reasons(emulator, "rf"), what="an ImmutableField event")


async def test_deletion_removes_the_children(emulator, operator, controller):
    await launched(emulator, controller, "rf")
    pod = await controller.start_pod("rf", 0)
    await wait_phase(emulator, "rf", "Running")
    await controller.delete(MLTJ, "rf")
    await emulator.wait_for(lambda: emulator.stored(MLTJ, NAMESPACE, "rf") is None, what="the MLTrainingJob gone")
    assert emulator.stored(JOBS, NAMESPACE, "rf") is None
    assert emulator.stored(SERVICES, NAMESPACE, "rf-workers") is None
    assert emulator.stored(CONFIGMAPS, NAMESPACE, "rf") is None
    assert emulator.stored(PODS, NAMESPACE, pod) is None


async def test_restart_mid_job_converges_without_duplicates(emulator, kubeconfig, controller):
    async with running_operator(emulator, kubeconfig):
        await launched(emulator, controller, "rf")
        pod = await controller.start_pod("rf", 0)
        await wait_phase(emulator, "rf", "Running")

    await controller.finish_pod(pod, 0, summary(0.66))
    await controller.complete_job("rf", succeeded=1)
    assert status(emulator, "rf")["phase"] == "Running"

    async with running_operator(emulator, kubeconfig):
        final = await wait_phase(emulator, "rf", "Succeeded")
    assert final["evaluation"]["accuracy"] == 0.66
    for kind, name in ((JOBS, "rf"), (SERVICES, "rf-workers"), (CONFIGMAPS, "rf")):
        assert emulator.created_count(kind, NAMESPACE, name) == 1, kind


async def test_conflict_on_create_reads_the_existing_job(emulator, operator, controller):
    emulator["post", kmock.resource("batch", "v1", "jobs")][:1] << 409
    await launched(emulator, controller, "rf")
    await wait_phase(emulator, "rf", "Pending")
    assert emulator.created_count(JOBS, NAMESPACE, "rf") == 1
    assert "LaunchRetry" not in event_reasons(emulator, "rf")


@pytest.mark.parametrize("error", [429, 500])
async def test_api_errors_are_retried(emulator, operator, controller, error):
    # NB: the emulator stores the object before it responds with the injected error, so the retry gets a 409.
    emulator["post", kmock.resource("v1/configmaps")][:1] << error
    emulator["patch", kmock.resource("quanttrain.io/v1alpha1/mltrainingjobs"), kmock.subresource("status")][:1] << error
    await launched(emulator, controller, "rf")
    await wait_phase(emulator, "rf", "Pending")
    pod = await controller.start_pod("rf", 0)
    await controller.finish_pod(pod, 0, summary())
    await controller.complete_job("rf", succeeded=1)
    await wait_phase(emulator, "rf", "Succeeded")
    assert event_reasons(emulator, "rf").count("LaunchRetry") == 1
    assert emulator.created_count(CONFIGMAPS, NAMESPACE, "rf") == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_command_serves_liveness_and_launches(emulator, kubeconfig: Path, controller):
    write_kubeconfig(kubeconfig, str(emulator.url).rstrip("/"))
    port = free_port()
    command = [sys.executable, "-m", "quanttrain.operator.cli", "operator", f"--namespace={NAMESPACE}",
               f"--liveness=http://127.0.0.1:{port}/healthz"]
    process = await asyncio.create_subprocess_exec(*command, env=dict(os.environ), stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.PIPE)
    try:
        await emulator.wait_for(lambda: emulator.watched(MLTJ), timeout=20, what="the operator's watch")
        await launched(emulator, controller, "rf")
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as response:
            assert response.status == 200
            assert "unfinishedJobs" in json.loads(await response.text())
    finally:
        process.terminate()
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    assert f"[{NAMESPACE}/rf]" in stderr.decode()


async def test_launch_fails_after_the_retry_limit(emulator, kubeconfig, controller, monkeypatch):
    monkeypatch.setenv("QUANTTRAIN_API_RETRY_LIMIT", "2")
    # The first POST stores the Service before the 503, so the retry meets a 409 and reads it back.
    emulator["post", kmock.resource("v1/services")] << 503
    emulator["get", kmock.resource("v1/services")] << 503
    async with running_operator(emulator, kubeconfig):
        await controller.create(MLTJ, resource("rf"))
        final = await wait_phase(emulator, "rf", "Failed")
    assert condition(emulator, "rf", "Failed")["reason"] == "LaunchFailed"
    assert "HTTP 503" in final["message"]
    assert emulator.stored(JOBS, NAMESPACE, "rf") is None


async def test_kueue_suspension_is_left_alone(emulator, operator, controller):
    labels = {"kueue.x-k8s.io/queue-name": "team-queue"}
    await controller.create(MLTJ, resource("rf", labels=labels))
    job = await emulator.wait_for(lambda: emulator.stored(JOBS, NAMESPACE, "rf"), what="Job rf")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"

    # Kueue suspends the Job until it admits the workload; the operator must not undo that.
    await controller.patch(JOBS, "rf", {"spec": {"suspend": True}})
    await emulator.wait_for(lambda: condition(emulator, "rf", "Suspended").get("status") == "True", what="Suspended")
    # A later change of a mutable field proves that the operator synced the Job after the suspension.
    await controller.patch(MLTJ, "rf", {"spec": {"runPolicy": {"activeDeadlineSeconds": 4000}}})
    synced = await emulator.wait_for(
        lambda: emulator.stored(JOBS, NAMESPACE, "rf")["spec"].get("activeDeadlineSeconds") == 4000 and
        emulator.stored(JOBS, NAMESPACE, "rf"), what="the new deadline on the Job",
    )
    assert synced["spec"]["suspend"] is True


async def test_job_deleted_while_operator_down_is_not_recreated(emulator, kubeconfig, controller):
    async with running_operator(emulator, kubeconfig):
        await launched(emulator, controller, "rf")
        await wait_phase(emulator, "rf", "Pending")
    await controller.delete(JOBS, "rf")

    async with running_operator(emulator, kubeconfig):
        final = await wait_phase(emulator, "rf", "Failed")
    assert condition(emulator, "rf", "Failed")["reason"] == "JobDeleted"
    assert "deleted before it finished" in final["message"]
    assert emulator.created_count(JOBS, NAMESPACE, "rf") == 1


async def test_ttl_change_after_success_reaches_the_job(emulator, operator, controller):
    await launched(emulator, controller, "rf")
    pod = await controller.start_pod("rf", 0)
    await controller.finish_pod(pod, 0, summary())
    await controller.complete_job("rf", succeeded=1)
    await wait_phase(emulator, "rf", "Succeeded")

    await controller.patch(MLTJ, "rf", {"spec": {"runPolicy": {"ttlSecondsAfterFinished": 120}}})
    await emulator.wait_for(lambda: emulator.stored(JOBS, NAMESPACE, "rf")["spec"].get("ttlSecondsAfterFinished") == 120,
                            what="the new TTL on the Job")
    assert status(emulator, "rf")["phase"] == "Succeeded"


async def test_model_change_after_success_is_ignored(emulator, operator, controller):
    job = await launched(emulator, controller, "rf")
    pod = await controller.start_pod("rf", 0)
    await controller.finish_pod(pod, 0, summary())
    await controller.complete_job("rf", succeeded=1)
    await wait_phase(emulator, "rf", "Succeeded")

    await controller.patch(MLTJ, "rf", {"spec": {"strategy": {"modelType": "SVM"}}})
    await emulator.wait_for(lambda: event_reasons(emulator, "rf").count("ImmutableField") == 1, what="a warning Event")
    assert emulator.stored(JOBS, NAMESPACE, "rf")["spec"] == job["spec"]
    assert status(emulator, "rf")["phase"] == "Succeeded"
