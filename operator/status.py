"""Pure status logic: the ``status`` of an MLTrainingJob, derived from what the cluster shows.

Nothing here performs I/O.  The handlers collect small facts about the Job and
its pods (:class:`JobFacts`, :class:`PodFacts`), call :func:`desired_status`
and write the result only when :func:`status_patch` finds a difference.  The
status is level-based: the same inputs always give the same status, so an
operator that restarts mid-job converges to the same status.

A terminal phase (Succeeded, Failed) never changes again.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
from typing import Any, Literal, Mapping

from pydantic import Field, ValidationError

from quanttrain.trainer.config import CamelModel
from quanttrain.trainer.summary import (
    EXIT_CONFIG_ERROR,
    EXIT_GATE_FAILED,
    Evaluation,
    Gate,
    ModelReference,
    TrainingSummary,
)

# Name of the trainer container in every pod; the status reads its exit code and message.
TRAINER_CONTAINER = "trainer"
# Label and annotation that the Job controller sets on the pods of an Indexed Job.
COMPLETION_INDEX_KEY = "batch.kubernetes.io/job-completion-index"
# Annotation on the Job with the run policy fields the operator last applied (JSON).
APPLIED_RUN_POLICY_KEY = "quanttrain.io/applied-run-policy"
# Maximum length of a trainer message copied into status.message; the termination
# message itself is capped at 4096 bytes, and a log tail can be noisy.
MAX_MESSAGE_CHARS = 1024


class Phase(str, enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})


class ConditionType(str, enum.Enum):
    CREATED = "Created"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    SPEC_CHANGE_REJECTED = "SpecChangeRejected"


class Reason(str, enum.Enum):
    """Condition reasons, and the reasons of the Events posted with them."""

    JOB_CREATED = "JobCreated"
    PODS_RUNNING = "PodsRunning"
    TRAINING_SUCCEEDED = "TrainingSucceeded"
    TRAINING_FAILED = "TrainingFailed"
    GATE_FAILED = "GateFailed"
    CONFIG_ERROR = "ConfigError"
    INVALID_SPEC = "InvalidSpec"
    LAUNCH_FAILED = "LaunchFailed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    JOB_DELETED = "JobDeleted"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    IMMUTABLE_FIELD = "ImmutableField"
    SPEC_MATCHES_LAUNCH = "SpecMatchesLaunch"


class Condition(CamelModel):
    """A Kubernetes-style condition."""

    type: ConditionType = Field(description="Condition type.")
    status: Literal["True", "False", "Unknown"] = Field(description="True when the condition holds, False when not, Unknown when undetermined.")
    reason: str = Field(min_length=1, description="Machine-readable reason in CamelCase.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str = Field(
        json_schema_extra={"format": "date-time"}, description="When the status of this condition last changed."
    )
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation the condition is based on.")


# The CRD's status schema is generated from this model.
class MLTrainingJobStatus(CamelModel):
    """The observed state of an MLTrainingJob, written by the operator."""

    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded or Failed.")
    conditions: list[Condition] = Field(default_factory=list, description="Latest observations of the job's state.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the operator last acted on."
    )
    start_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When the first pod started."
    )
    completion_time: str | None = Field(
        default=None, json_schema_extra={"format": "date-time"}, description="When the job reached a terminal phase."
    )
    evaluation: Evaluation | None = Field(default=None, description="Test-set evaluation from the trainer.")
    best_hyperparameters: dict[str, Any] | None = Field(
        default=None, description="Hyperparameters of the chosen model."
    )
    model: ModelReference | None = Field(default=None, description="Where the trained model was registered.")
    gate: Gate | None = Field(default=None, description="The performance gate's outcome.")
    duration_seconds: float | None = Field(default=None, ge=0, description="Training time reported by the trainer.")
    message: str | None = Field(default=None, description="Last message from the operator or the trainer.")


@dataclasses.dataclass(frozen=True)
class PodFacts:
    """Facts about one trainer pod that the status depends on."""

    name: str
    index: int | None
    phase: str
    exit_code: int | None = None
    message: str = ""
    started_at: str | None = None
    deleting: bool = False

    @property
    def active(self) -> bool:
        return self.phase in ("Pending", "Running") and not self.deleting


@dataclasses.dataclass(frozen=True)
class JobFacts:
    """Facts about the batch/v1 Job that the status depends on."""

    name: str
    suspended: bool
    completions: int = 1
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    complete: bool = False
    finished_at: str | None = None
    failed_reason: str | None = None
    failed_message: str = ""
    applied_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    owner_uid: str | None = None


def now_rfc3339(clock: datetime.datetime | None = None) -> str:
    moment = clock or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_facts(pod: Mapping[str, Any]) -> PodFacts:
    """Extract the trainer container's outcome from a pod body."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    index_text = (metadata.get("annotations") or {}).get(COMPLETION_INDEX_KEY) or (
        metadata.get("labels") or {}
    ).get(COMPLETION_INDEX_KEY)
    exit_code, message, started_at = None, "", None
    for container in status.get("containerStatuses") or []:
        if container.get("name") != TRAINER_CONTAINER:
            continue
        state = container.get("state") or {}
        terminated = state.get("terminated") or {}
        if terminated:
            exit_code = terminated.get("exitCode")
            message = terminated.get("message") or ""
            started_at = terminated.get("startedAt")
        elif state.get("running"):
            started_at = state["running"].get("startedAt")
    return PodFacts(
        name=metadata.get("name", ""),
        index=int(index_text) if index_text is not None and str(index_text).isdigit() else None,
        phase=status.get("phase") or "Pending",
        exit_code=exit_code,
        message=message,
        started_at=started_at,
        deleting=bool(metadata.get("deletionTimestamp")),
    )


def job_facts(job: Mapping[str, Any]) -> JobFacts:
    """Extract completion, failure and the mutable fields from a Job body."""
    spec = job.get("spec") or {}
    status = job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    owners = [ref for ref in (job.get("metadata") or {}).get("ownerReferences") or [] if ref.get("controller")]
    return JobFacts(
        name=(job.get("metadata") or {}).get("name", ""),
        suspended=bool(spec.get("suspend")),
        completions=int(spec.get("completions") or 1),
        active=int(status.get("active") or 0),
        succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        complete="Complete" in conditions,
        finished_at=status.get("completionTime") or (failed.get("lastTransitionTime") if failed else None),
        failed_reason=failed.get("reason") if failed else None,
        failed_message=(failed.get("message") or "") if failed else "",
        applied_fields=_applied_fields(job, spec),
        owner_uid=owners[0].get("uid") if owners else None,
    )


def _applied_fields(job: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """Return the run policy fields the operator last applied, from the annotation, else the Job's values."""
    text = ((job.get("metadata") or {}).get("annotations") or {}).get(APPLIED_RUN_POLICY_KEY)
    try:
        applied = json.loads(text) if text else None
    except ValueError:
        applied = None
    if isinstance(applied, dict):
        return applied
    return {key: spec.get(key) for key in ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished")}


def parse_summary(message: str) -> TrainingSummary | None:
    """Parse a trainer's termination message; None when it is not a summary (a log tail, say)."""
    try:
        return TrainingSummary.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


# -- the status itself --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Observation:
    """Everything :func:`desired_status` looks at, gathered by the handlers."""

    generation: int
    job: JobFacts | None
    pods: tuple[PodFacts, ...] = ()
    rejected_paths: tuple[str, ...] = ()
    now: str = dataclasses.field(default_factory=now_rfc3339)
    # Seconds to wait for pod states that lag behind the Job's own outcome.
    pod_state_grace_seconds: float = 0.0


def desired_status(current: Mapping[str, Any], seen: Observation) -> dict[str, Any]:
    """Compute the whole status the resource should have; ``current`` is left untouched."""
    status = json.loads(json.dumps(dict(current)))  # deep copy of plain JSON
    status["observedGeneration"] = seen.generation
    _set_rejection(status, seen)
    if status.get("phase") in TERMINAL_PHASES:
        return status
    if seen.job is None:
        if _has_condition(status, ConditionType.CREATED):
            message = "the Job was deleted before it finished"
            return _finish(status, seen, Phase.FAILED, Reason.JOB_DELETED, message)
        return status

    _set_condition(status, seen, ConditionType.CREATED, True, Reason.JOB_CREATED, f"created Job {seen.job.name}")
    if _pod_states_lag_behind(seen):
        return _progress(status, seen)
    if seen.job.complete:
        return _succeed(status, seen)
    if seen.job.failed_reason is not None:
        return _fail(status, seen)
    return _progress(status, seen)


def _pod_states_lag_behind(seen: Observation) -> bool:
    """Tell whether the Job finished before the pods' final states were observed, within the grace period.

    NB: the Job and its pods arrive through separate watch streams, so the
    Job's Complete or Failed condition may be seen before pod 0's termination
    message.  A terminal phase is final, so it waits for the pods a little.
    """
    job = seen.job
    if job is None or not (job.complete or job.failed_reason is not None) or job.finished_at is None:
        return False
    if job.complete:
        observed = _index_zero(seen.pods, succeeded=True) is not None
    else:
        observed = sum(1 for pod in seen.pods if pod.exit_code not in (None, 0)) >= job.failed
    if observed:
        return False
    return _seconds_between(job.finished_at, seen.now) < seen.pod_state_grace_seconds


def _seconds_between(earlier: str, later: str) -> float:
    try:
        start = datetime.datetime.fromisoformat(earlier.replace("Z", "+00:00"))
        end = datetime.datetime.fromisoformat(later.replace("Z", "+00:00"))
    except ValueError:
        return math.inf  # an unreadable time must not hold the outcome back
    return (end - start).total_seconds()


def _progress(status: dict[str, Any], seen: Observation) -> dict[str, Any]:
    job = seen.job
    assert job is not None
    if job.suspended:
        _set_condition(status, seen, ConditionType.SUSPENDED, True, Reason.SUSPENDED, "runPolicy.suspend is true")
        status["phase"] = Phase.PENDING.value
        return status
    if _has_condition(status, ConditionType.SUSPENDED):
        _set_condition(status, seen, ConditionType.SUSPENDED, False, Reason.RESUMED, "runPolicy.suspend is false")

    running = [pod for pod in seen.pods if pod.phase == "Running" and not pod.deleting]
    failed = [pod for pod in seen.pods if pod.phase == "Failed"]
    if running:
        status["phase"] = Phase.RUNNING.value
        status.setdefault("startTime", _earliest_start(running) or seen.now)
        message = f"{len(running)} of {job.completions} pods running"
        if failed:
            message += f"; {len(failed)} failed pod(s) retried"
        _set_condition(status, seen, ConditionType.RUNNING, True, Reason.PODS_RUNNING, message)
    else:
        status.setdefault("phase", Phase.PENDING.value)
        if status["phase"] == Phase.PENDING.value and failed:
            status["message"] = _failure_message(failed[-1])
    return status


def _succeed(status: dict[str, Any], seen: Observation) -> dict[str, Any]:
    summary_pod = _index_zero(seen.pods, succeeded=True)
    summary = parse_summary(summary_pod.message) if summary_pod else None
    if summary is None:
        message = "training succeeded, but pod 0 left no summary in its termination message"
    else:
        _copy_summary(status, summary)
        message = summary.message or f"accuracy {summary.evaluation.accuracy:.4f}, F1 {summary.evaluation.f1_score:.4f}"
    return _finish(status, seen, Phase.SUCCEEDED, Reason.TRAINING_SUCCEEDED, message)


def _fail(status: dict[str, Any], seen: Observation) -> dict[str, Any]:
    job = seen.job
    assert job is not None
    failed = sorted((pod for pod in seen.pods if pod.exit_code not in (None, 0)), key=_pod_order)
    permanent = [pod for pod in failed if pod.exit_code in (EXIT_GATE_FAILED, EXIT_CONFIG_ERROR)]
    culprit = (permanent or failed or [None])[-1]
    if culprit is not None and culprit.exit_code == EXIT_GATE_FAILED:
        reason = Reason.GATE_FAILED
    elif culprit is not None and culprit.exit_code == EXIT_CONFIG_ERROR:
        reason = Reason.CONFIG_ERROR
    elif job.failed_reason == "DeadlineExceeded":
        reason = Reason.DEADLINE_EXCEEDED
    else:
        reason = Reason.TRAINING_FAILED

    summary = parse_summary(culprit.message) if culprit else None
    if summary is not None:
        _copy_summary(status, summary)
    if culprit is not None:
        message = _failure_message(culprit)
    else:
        message = job.failed_message or f"the Job failed ({job.failed_reason})"
    return _finish(status, seen, Phase.FAILED, reason, message)


def _finish(status: dict[str, Any], seen: Observation, phase: Phase, reason: Reason, message: str) -> dict[str, Any]:
    status["phase"] = phase.value
    status["message"] = message
    status["completionTime"] = (seen.job.completion_time if seen.job else None) or seen.now
    if _has_condition(status, ConditionType.RUNNING):
        _set_condition(status, seen, ConditionType.RUNNING, False, reason, "no pods run any more")
    condition = ConditionType.SUCCEEDED if phase is Phase.SUCCEEDED else ConditionType.FAILED
    _set_condition(status, seen, condition, True, reason, message)
    return status


def failed_without_job(
    current: Mapping[str, Any], generation: int, reason: Reason, message: str, now: str | None = None
) -> dict[str, Any]:
    """Return the Failed status of a job that never got its children: an invalid spec, or a launch out of retries."""
    seen = Observation(generation=generation, job=None, now=now or now_rfc3339())
    status = json.loads(json.dumps(dict(current)))
    status["observedGeneration"] = generation
    return _finish(status, seen, Phase.FAILED, reason, message)


def _copy_summary(status: dict[str, Any], summary: TrainingSummary) -> None:
    payload = summary.to_spec()
    status["evaluation"] = payload["evaluation"]
    status["bestHyperparameters"] = payload.get("bestHyperparameters", {})
    status["gate"] = payload["gate"]
    status["durationSeconds"] = payload["durationSeconds"]
    if "model" in payload:
        status["model"] = payload["model"]


def _failure_message(pod: PodFacts) -> str:
    summary = parse_summary(pod.message)
    if summary is not None:
        text = summary.message or "; ".join(summary.gate.reasons)
    else:
        lines = [line for line in pod.message.strip().splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    prefix = f"pod {pod.name} exited with code {pod.exit_code}"
    return (f"{prefix}: {text}" if text else prefix)[:MAX_MESSAGE_CHARS]


def _set_rejection(status: dict[str, Any], seen: Observation) -> None:
    if seen.rejected_paths:
        message = (
            "changes to " + ", ".join(seen.rejected_paths) + " are ignored: the job runs with the spec it was "
            "launched with; only runPolicy.suspend, runPolicy.activeDeadlineSeconds and "
            "runPolicy.ttlSecondsAfterFinished may change. Revert them, or delete and re-create the job"
        )
        _set_condition(status, seen, ConditionType.SPEC_CHANGE_REJECTED, True, Reason.IMMUTABLE_FIELD, message)
    elif _has_condition(status, ConditionType.SPEC_CHANGE_REJECTED):
        _set_condition(
            status, seen, ConditionType.SPEC_CHANGE_REJECTED, False, Reason.SPEC_MATCHES_LAUNCH,
            "the spec matches the launched job",
        )


def _has_condition(status: Mapping[str, Any], kind: ConditionType) -> bool:
    return any(c.get("type") == kind.value for c in status.get("conditions") or [])


def _set_condition(
    status: dict[str, Any], seen: Observation, kind: ConditionType, holds: bool, reason: Reason, message: str
) -> None:
    """Add or update one condition; lastTransitionTime moves only when its status flips."""
    conditions = status.setdefault("conditions", [])
    value = "True" if holds else "False"
    for condition in conditions:
        if condition.get("type") == kind.value:
            if condition.get("status") != value:
                condition["lastTransitionTime"] = seen.now
            condition.update(status=value, reason=reason.value, message=message, observedGeneration=seen.generation)
            return
    conditions.append({
        "type": kind.value, "status": value, "reason": reason.value, "message": message,
        "lastTransitionTime": seen.now, "observedGeneration": seen.generation,
    })


def condition(status: Mapping[str, Any], kind: ConditionType) -> Mapping[str, Any] | None:
    """Return the condition of one type, or None."""
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind.value), None)


def _index_zero(pods: tuple[PodFacts, ...], *, succeeded: bool) -> PodFacts | None:
    candidates = [pod for pod in pods if pod.index == 0 and (not succeeded or pod.exit_code == 0)]
    return candidates[-1] if candidates else None


def _earliest_start(running: list[PodFacts]) -> str | None:
    starts = [pod.started_at for pod in running if pod.started_at]
    return min(starts) if starts else None


def _pod_order(pod: PodFacts) -> tuple[str, str]:
    return (pod.started_at or "", pod.name)


# Spec fields that may change while a job runs; the operator copies them to the Job.
MUTABLE_SPEC_PATHS = frozenset({
    "runPolicy.suspend", "runPolicy.activeDeadlineSeconds", "runPolicy.ttlSecondsAfterFinished",
})


def changed_paths(launched: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Return the dotted spec paths (``spec.training.cvFolds``) that differ from the launched spec and may not change."""
    found: list[str] = []
    for key in sorted(set(launched) | set(current)):
        path = f"{prefix}{key}"
        old, new = launched.get(key), current.get(key)
        if path in MUTABLE_SPEC_PATHS or old == new:
            continue
        if isinstance(old, Mapping | None) and isinstance(new, Mapping | None):
            # A section that is absent on one side compares as empty, so adding
            # runPolicy.suspend to a spec without runPolicy is still a mutable change.
            found.extend(changed_paths(old or {}, new or {}, prefix=f"{path}."))
        else:
            found.append(f"spec.{path}")
    return found


def status_patch(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """Return a JSON merge patch from ``current`` to ``desired`` (top-level keys), empty when equal.

    Lists (conditions) are replaced whole, as a merge patch does anyway.
    """
    patch: dict[str, Any] = {}
    for key in set(current) | set(desired):
        if key not in desired:
            patch[key] = None
        elif current.get(key) != desired[key]:
            patch[key] = desired[key]
    return patch


def transitions(current: Mapping[str, Any], desired: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Return the conditions of ``desired`` that are new or changed status or reason: the moments worth an Event."""
    before = {c.get("type"): (c.get("status"), c.get("reason")) for c in current.get("conditions") or []}
    return [
        c for c in desired.get("conditions") or []
        if before.get(c.get("type")) != (c.get("status"), c.get("reason"))
    ]
