"""The pure status logic: phases, conditions and the summary copied from the termination message."""

from __future__ import annotations

from typing import Any

import pytest

from quanttrain.operator import status
from quanttrain.operator.status import JobFacts, Observation, PodFacts
from quanttrain.trainer.summary import Evaluation, Gate, TrainingSummary

NOW = "2026-01-02T03:04:05Z"
LATER = "2026-01-02T04:00:00Z"


def summary(accuracy: float = 0.61, passed: bool = True, message: str = "") -> str:
    return TrainingSummary(
        strategy="s", model_type="XGB",
        evaluation=Evaluation(accuracy=accuracy, precision=0.6, recall=0.6, f1_score=0.58,
                              confusion_matrix=[[3, 1], [1, 3]], classes=["DOWN", "UP"], test_rows=8),
        best_hyperparameters={"max_depth": 4},
        gate=Gate(passed=passed, reasons=[] if passed else ["accuracy 0.4 is below 0.55"]),
        duration_seconds=3.5, message=message,
    ).to_message()


def job(**changes: Any) -> JobFacts:
    return JobFacts(**{"name": "rf", "suspended": False, "owner_uid": "u1", **changes})


def pod(index: int = 0, phase: str = "Running", exit_code: int | None = None, message: str = "", name: str = "") -> PodFacts:
    return PodFacts(name=name or f"rf-{index}-abcde", index=index, phase=phase, exit_code=exit_code,
                    message=message, started_at=NOW)


def desired(current: dict[str, Any], **seen: Any) -> dict[str, Any]:
    return status.desired_status(current, Observation(generation=seen.pop("generation", 1), now=seen.pop("now", NOW), **seen))


def condition(result: dict[str, Any], kind: str) -> dict[str, Any]:
    found = status.condition(result, status.ConditionType(kind))
    assert found is not None, f"no {kind} condition in {result}"
    return dict(found)


def test_no_job_yet_leaves_status_alone():
    assert desired({}, job=None) == {"observedGeneration": 1}


def test_job_seen_means_pending_and_created():
    result = desired({}, job=job())
    assert result["phase"] == "Pending"
    assert condition(result, "Created")["reason"] == "JobCreated"
    assert condition(result, "Created")["status"] == "True"


def test_running_pod_means_running_with_start_time():
    result = desired({}, job=job(active=1), pods=(pod(),))
    assert result["phase"] == "Running"
    assert result["startTime"] == NOW
    assert condition(result, "Running")["reason"] == "PodsRunning"


def test_complete_job_copies_the_summary_of_index_zero():
    pods = (pod(0, "Succeeded", 0, summary(0.61)), pod(1, "Succeeded", 0, summary(0.1)))
    result = desired({"phase": "Running"}, job=job(complete=True, completion_time=LATER), pods=pods)
    assert result["phase"] == "Succeeded"
    assert result["evaluation"]["accuracy"] == 0.61
    assert result["bestHyperparameters"] == {"max_depth": 4}
    assert result["completionTime"] == LATER
    assert condition(result, "Succeeded")["reason"] == "TrainingSucceeded"


def test_completion_waits_for_pod_zero_within_grace():
    finished = job(complete=True, completion_time=NOW, finished_at=NOW)
    result = desired({"phase": "Running"}, job=finished, pods=(pod(0, "Running"),), pod_state_grace_seconds=30)
    assert result["phase"] == "Running"
    assert "completionTime" not in result


def test_completion_uses_summary_once_pod_zero_is_seen():
    finished = job(complete=True, completion_time=NOW, finished_at=NOW)
    pods = (pod(0, "Succeeded", 0, summary(0.61)),)
    result = desired({"phase": "Running"}, job=finished, pods=pods, pod_state_grace_seconds=30)
    assert result["phase"] == "Succeeded"
    assert result["evaluation"]["accuracy"] == 0.61


def test_completion_stops_waiting_after_grace():
    finished = job(complete=True, completion_time=NOW, finished_at=NOW)
    result = desired({"phase": "Running"}, job=finished, pods=(pod(0, "Running"),), now=LATER,
                     pod_state_grace_seconds=30)
    assert result["phase"] == "Succeeded"
    assert "no summary" in result["message"]


def test_failure_waits_for_every_failed_pod_within_grace():
    failed = job(failed=2, failed_reason="BackoffLimitExceeded", finished_at=NOW)
    pods = (pod(0, "Failed", 1, "first", name="rf-0-a"), pod(0, "Running", name="rf-0-b"))
    result = desired({"phase": "Running"}, job=failed, pods=pods, pod_state_grace_seconds=30)
    assert result["phase"] == "Running"


def test_failure_names_the_last_pod_once_seen():
    failed = job(failed=2, failed_reason="BackoffLimitExceeded", finished_at=NOW)
    pods = (pod(0, "Failed", 1, "first", name="rf-0-a"), pod(0, "Failed", 1, "RuntimeError: second", name="rf-0-b"))
    result = desired({"phase": "Running"}, job=failed, pods=pods, pod_state_grace_seconds=30)
    assert result["phase"] == "Failed"
    assert "rf-0-b" in result["message"]


def test_success_without_summary_says_so():
    result = desired({}, job=job(complete=True), pods=(pod(0, "Succeeded", 0, "plain log line"),))
    assert result["phase"] == "Succeeded"
    assert "no summary" in result["message"]
    assert "evaluation" not in result


@pytest.mark.parametrize(
    ("exit_code", "message", "job_reason", "reason"),
    [
        (1, "Traceback...\nRuntimeError: NCCL timeout", "BackoffLimitExceeded", "TrainingFailed"),
        (2, "config error: dataset /data/x.csv not found", "PodFailurePolicy", "ConfigError"),
        (3, summary(0.4, passed=False), "PodFailurePolicy", "GateFailed"),
        (137, "", "DeadlineExceeded", "DeadlineExceeded"),
    ],
)
def test_failed_job_reason_follows_the_exit_code(exit_code, message, job_reason, reason):
    failed_pod = pod(0, "Failed", exit_code, message)
    result = desired({"phase": "Running"}, job=job(failed_reason=job_reason), pods=(failed_pod,))
    assert result["phase"] == "Failed"
    assert condition(result, "Failed")["reason"] == reason
    assert result["message"].startswith(f"pod rf-0-abcde exited with code {exit_code}")


def test_failure_message_is_the_trainers_last_line():
    failed_pod = pod(0, "Failed", 1, "loading\nRuntimeError: NCCL timeout\n")
    result = desired({}, job=job(failed_reason="BackoffLimitExceeded"), pods=(failed_pod,))
    assert result["message"] == "pod rf-0-abcde exited with code 1: RuntimeError: NCCL timeout"


def test_gate_failure_keeps_the_evaluation_and_reasons():
    failed_pod = pod(0, "Failed", 3, summary(0.4, passed=False))
    result = desired({}, job=job(failed_reason="PodFailurePolicy"), pods=(failed_pod,))
    assert result["evaluation"]["accuracy"] == 0.4
    assert result["gate"] == {"passed": False, "reasons": ["accuracy 0.4 is below 0.55"]}
    assert result["message"].endswith("accuracy 0.4 is below 0.55")


def test_retried_pod_failure_keeps_running():
    pods = (pod(0, "Failed", 1, "boom", name="rf-0-aaaaa"), pod(0, "Running", name="rf-0-bbbbb"))
    result = desired({"phase": "Running"}, job=job(active=1, failed=1), pods=pods)
    assert result["phase"] == "Running"
    assert "1 failed pod(s) retried" in condition(result, "Running")["message"]


@pytest.mark.parametrize("terminal", ["Succeeded", "Failed"])
def test_terminal_phase_stays_terminal(terminal):
    current = {"phase": terminal, "message": "done"}
    result = desired(current, job=job(active=1), pods=(pod(),))
    assert result["phase"] == terminal
    assert result["message"] == "done"


def test_suspended_job_is_pending_and_suspended():
    result = desired({}, job=job(suspended=True))
    assert result["phase"] == "Pending"
    assert condition(result, "Suspended")["status"] == "True"


def test_resumed_job_clears_suspended():
    suspended = desired({}, job=job(suspended=True))
    result = desired(suspended, job=job(), now=LATER)
    assert condition(result, "Suspended")["status"] == "False"
    assert condition(result, "Suspended")["reason"] == "Resumed"
    assert condition(result, "Suspended")["lastTransitionTime"] == LATER


def test_transition_time_moves_only_when_status_flips():
    first = desired({}, job=job(active=1), pods=(pod(),))
    second = desired(first, job=job(active=1), pods=(pod(), pod(1)), now=LATER)
    assert condition(second, "Running")["lastTransitionTime"] == NOW


def test_job_deleted_after_creation_fails():
    created = desired({}, job=job())
    result = desired(created, job=None)
    assert result["phase"] == "Failed"
    assert condition(result, "Failed")["reason"] == "JobDeleted"


def test_rejected_spec_change_is_a_condition():
    result = desired({}, job=job(), rejected_paths=("spec.strategy.modelType",))
    rejected = condition(result, "SpecChangeRejected")
    assert rejected["status"] == "True"
    assert rejected["reason"] == "ImmutableField"
    assert "spec.strategy.modelType" in rejected["message"]


def test_reverted_spec_change_clears_the_condition():
    rejected = desired({}, job=job(), rejected_paths=("spec.strategy.modelType",))
    result = desired(rejected, job=job())
    assert condition(result, "SpecChangeRejected")["status"] == "False"


def test_observed_generation_follows_the_resource():
    result = desired({}, job=job(), generation=4)
    assert result["observedGeneration"] == 4
    assert condition(result, "Created")["observedGeneration"] == 4


def test_failed_without_job_reports_invalid_spec():
    result = status.failed_without_job({}, 2, status.Reason.INVALID_SPEC, "spec.x: bad", now=NOW)
    assert result["phase"] == "Failed"
    assert result["message"] == "spec.x: bad"
    assert condition(result, "Failed")["reason"] == "InvalidSpec"
    assert result["completionTime"] == NOW


def test_status_patch_is_empty_when_nothing_changed():
    current = desired({}, job=job())
    assert status.status_patch(current, desired(current, job=job(), now=LATER)) == {}


def test_status_patch_removes_dropped_keys():
    assert status.status_patch({"phase": "Running", "message": "x"}, {"phase": "Running"}) == {"message": None}


def test_changed_paths_ignore_mutable_run_policy():
    launched = {"runPolicy": {"suspend": True, "backoffLimit": 3}, "strategy": {"modelType": "XGB", "name": "s"}}
    current = {"runPolicy": {"suspend": False, "backoffLimit": 5}, "strategy": {"modelType": "SVM", "name": "s"}}
    assert status.changed_paths(launched, current) == ["spec.runPolicy.backoffLimit", "spec.strategy.modelType"]


def test_pod_facts_read_the_trainer_container():
    body = {
        "metadata": {"name": "rf-0-x", "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
        "status": {"phase": "Failed", "containerStatuses": [
            {"name": "sidecar", "state": {"terminated": {"exitCode": 9}}},
            {"name": "trainer", "state": {"terminated": {"exitCode": 3, "message": "m", "startedAt": NOW}}},
        ]},
    }
    facts = status.pod_facts(body)
    assert facts == PodFacts(name="rf-0-x", index=0, phase="Failed", exit_code=3, message="m", started_at=NOW)


def test_job_facts_read_conditions_and_owner():
    body = {
        "metadata": {"name": "rf", "ownerReferences": [{"uid": "u1", "controller": True}]},
        "spec": {"suspend": False, "activeDeadlineSeconds": 60},
        "status": {"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
    }
    facts = status.job_facts(body)
    assert facts.failed_reason == "BackoffLimitExceeded"
    assert facts.owner_uid == "u1"
    assert facts.failed == 2
    assert facts.applied_fields == {"suspend": False, "activeDeadlineSeconds": 60, "ttlSecondsAfterFinished": None}


def test_job_facts_prefer_the_applied_run_policy_annotation():
    body = {"metadata": {"name": "rf", "annotations": {status.APPLIED_RUN_POLICY_KEY: '{"suspend": true}'}},
            "spec": {"suspend": False}}
    assert status.job_facts(body).applied_fields == {"suspend": True}


def test_transitions_list_new_and_changed_conditions():
    before = desired({}, job=job())
    after = desired(before, job=job(active=1), pods=(pod(),))
    assert [c["type"] for c in status.transitions(before, after)] == ["Running"]


def test_changed_paths_treat_a_missing_section_as_empty():
    assert status.changed_paths({}, {"runPolicy": {"ttlSecondsAfterFinished": 60}}) == []
    assert status.changed_paths({}, {"runPolicy": {"backoffLimit": 1}}) == ["spec.runPolicy.backoffLimit"]


def test_changed_paths_report_a_scalar_replaced_by_a_list():
    assert status.changed_paths({"features": {"featureColumns": ["a"]}}, {"features": {"featureColumns": "a"}}) == [
        "spec.features.featureColumns"
    ]


def test_active_but_pending_pods_keep_the_job_pending():
    result = desired({}, job=job(active=2, start_time=NOW), pods=(pod(0, "Pending"), pod(1, "Pending")))
    assert result["phase"] == "Pending"


def test_running_message_counts_pods_of_all_nodes():
    result = desired({}, job=job(active=2, completions=2), pods=(pod(0), pod(1, "Pending")))
    assert condition(result, "Running")["message"] == "1 of 2 pods running"
