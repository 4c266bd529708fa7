"""kopf handlers: thin glue between watch events, the pure builders and the status logic.

* ``launch`` (create and resume) checks the spec and creates the ConfigMap,
  Service and Indexed Job; a rule violation fails the job once (InvalidSpec).
* ``monitor``, a daemon per unfinished MLTrainingJob, writes the status from
  what the Job and pod indexes show, keeps the Job's mutable fields in step
  with the spec, and stops leftover pods once the job has finished.  Events on
  the Job, its pods and the MLTrainingJob wake it; it also checks every
  ``resync_seconds`` without any.
* ``clean_up`` deletes the children when the MLTrainingJob is deleted, for
  clusters where owner-reference garbage collection is slow or off.

Every status write reads the object fresh under a per-job lock, so the daemon
and the launch handler never overwrite each other's conditions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import Any, Awaitable, Callable, Iterable, Mapping

import kopf
import yaml
from pydantic import ValidationError

from quanttrain.operator import api, manifests
from quanttrain.operator import status as job_status
from quanttrain.operator.kubeapi import ApiError, KubeApi, object_path, resource_path
from quanttrain.operator.runner import credentials_problem
from quanttrain.operator.settings import OperatorSettings
from quanttrain.operator.status import ConditionType, Observation, Reason

RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)
CHILD_LABELS = {api.LABEL_JOB_NAME: kopf.PRESENT}
# Finalizer, progress and diff-base annotations live under the project's own domain.
ANNOTATION_PREFIX = api.GROUP

Key = tuple[str, str]


class ForeignChildError(Exception):
    """A child with the expected name exists but belongs to another MLTrainingJob (one deleted a moment ago)."""


@dataclasses.dataclass
class Runtime:
    """State of one operator run; reset at start-up because each run has its own event loop."""

    settings: OperatorSettings = dataclasses.field(default_factory=OperatorSettings)
    client: KubeApi = dataclasses.field(default_factory=KubeApi)
    triggers: dict[Key, asyncio.Event] = dataclasses.field(default_factory=dict)
    locks: dict[Key, asyncio.Lock] = dataclasses.field(default_factory=dict)

    def trigger(self, key: Key) -> asyncio.Event:
        return self.triggers.setdefault(key, asyncio.Event())

    def wake(self, key: Key) -> None:
        if key in self.triggers:
            self.triggers[key].set()

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        self.triggers.pop(key, None)
        self.locks.pop(key, None)


runtime = Runtime()


# -- operator lifecycle -------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    global runtime
    operator_settings = OperatorSettings.from_env()
    runtime = Runtime(settings=operator_settings, client=KubeApi(operator_settings.api_timeout_seconds))
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # With scanning off, --namespace names are taken as they are and the CRD must exist at start-up.
    settings.scanning.disabled = not operator_settings.namespace_scanning
    # Events are posted on purpose with kopf.event(); log lines below WARNING stay in the log.
    settings.posting.level = logging.WARNING
    logger.info(f"default trainer image {operator_settings.trainer_image}")


# Seconds between login attempts while no credentials exist (kopf's own default for failed handlers).
LOGIN_RETRY_SECONDS = 60


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in as kopf does with the client library (in-cluster or kubeconfig), and share the credentials.

    kopf retries a failed login, which helps when a token or the API server is
    briefly unavailable.  ``run_operator`` does not start without credentials;
    when they disappear later, each retry logs one line saying what is missing.
    """
    problem = credentials_problem()
    if problem is not None:
        # NOTE: kopf 1.45 does not stop the operator when a login fails permanently; it waits
        # for credentials forever, so a retry is the way to recover once they are back.
        raise kopf.TemporaryError(problem, delay=LOGIN_RETRY_SECONDS)
    # The client library reads files and may run an exec plugin: keep that off the event loop.
    info = await asyncio.to_thread(functools.partial(kopf.login_via_client, **kwargs))
    if info is not None:
        runtime.client.configure(info)
    return info


@kopf.on.cleanup()
async def close(**_: Any) -> None:
    await runtime.client.close()


@kopf.on.probe(id="unfinishedJobs")
def unfinished_jobs(**_: Any) -> int:
    """Number of MLTrainingJobs the operator is following; served on the liveness endpoint."""
    return len(runtime.triggers)


# -- indexes of the children, keyed by (namespace, MLTrainingJob name) --------


@kopf.index("batch", "v1", "jobs", labels=CHILD_LABELS)
def jobs_by_owner(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Key, Any] | None:
    owner = labels.get(api.LABEL_JOB_NAME)
    return {(namespace, owner): job_status.job_facts(body)} if owner else None


@kopf.index("", "v1", "pods", labels=CHILD_LABELS)
def pods_by_owner(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Key, Any] | None:
    owner = labels.get(api.LABEL_JOB_NAME)
    return {(namespace, owner): job_status.pod_facts(body)} if owner else None


@kopf.index("", "v1", "configmaps", labels=CHILD_LABELS)
def launched_specs(namespace: str, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> dict[Key, Any] | None:
    """Index the spec each job was launched with, read from its ConfigMap, with the job's uid."""
    owner = labels.get(api.LABEL_JOB_NAME)
    text = (body.get("data") or {}).get(manifests.JOB_FILE_NAME)
    if not owner or not text:
        return None
    document = yaml.safe_load(text) or {}
    uid = (document.get("metadata") or {}).get("uid")
    return {(namespace, owner): (uid, document.get("spec") or {})}


# -- child events wake the job's daemon -----------------------------------------


@kopf.on.event("batch", "v1", "jobs", labels=CHILD_LABELS)
def job_event(namespace: str, labels: Mapping[str, str], **_: Any) -> None:
    runtime.wake((namespace, labels[api.LABEL_JOB_NAME]))


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS)
async def pod_event(
    type: str | None, namespace: str, name: str, labels: Mapping[str, str], body: kopf.Body,
    logger: logging.Logger, **_: Any,
) -> None:
    runtime.wake((namespace, labels[api.LABEL_JOB_NAME]))
    index = job_status.pod_facts(body).index
    if type == "DELETED" or index is None or api.LABEL_REPLICA_INDEX in labels:
        return
    # A Job's pod template cannot carry a per-pod label, so the index label is added here.
    patch = {"metadata": {"labels": {api.LABEL_REPLICA_INDEX: str(index)}}}
    try:
        await runtime.client.merge_patch(resource_path("v1", "pods", namespace, name), patch)
    except ApiError as error:
        logger.warning(f"could not label pod {name} with its replica index: {error}; the next pod event retries")


# -- the MLTrainingJob ----------------------------------------------------------


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
async def launch(
    body: kopf.Body, spec: kopf.Spec, status: kopf.Status, name: str, namespace: str, retry: int,
    logger: logging.Logger, **_: Any,
) -> None:
    key = (namespace, name)
    if status.get("phase") in job_status.TERMINAL_PHASES:
        return
    if job_status.condition(status, ConditionType.CREATED):
        # The Job existed once: one that is gone now was deleted or expired, and the daemon
        # reports it. Creating it again would train a second time.
        runtime.wake(key)
        return
    job = manifests.JobIdentity.from_body(body)
    parsed, problems = manifests.spec_problems(name, dict(spec))
    if parsed is None:
        message = "invalid spec: " + "; ".join(problems)
        await _fail_launch(body, Reason.INVALID_SPEC, message, logger)
        raise kopf.PermanentError(message)

    children = manifests.build_children(job, parsed, dict(spec), runtime.settings)
    try:
        created = await ensure_children(runtime.client, children, job.uid)
    except (ApiError, ForeignChildError) as error:
        raise await _launch_error(body, error, retry, logger) from error
    if created:
        kopf.event(body, type="Normal", reason=Reason.JOB_CREATED.value, message="created " + ", ".join(created))
        logger.info("created " + ", ".join(created))
    runtime.wake(key)


async def ensure_children(client: KubeApi, children: Iterable[Mapping[str, Any]], owner_uid: str) -> list[str]:
    """Create each child unless it exists; return the ones created.  409 means it exists: check the owner."""
    created = []
    for child in children:
        description = f"{child['kind']} {child['metadata']['name']}"
        try:
            await client.create(child)
        except ApiError as error:
            if not error.conflict:
                raise
            existing = await client.get(object_path(child))
            owners = [ref.get("uid") for ref in existing["metadata"].get("ownerReferences") or [] if ref.get("controller")]
            if owners != [owner_uid]:
                raise ForeignChildError(
                    f"{description} exists but belongs to another MLTrainingJob (owner uid {owners}); "
                    "waiting for the garbage collector to delete it"
                ) from error
        else:
            created.append(description)
    return created


async def _launch_error(body: kopf.Body, error: Exception, retry: int, logger: logging.Logger) -> Exception:
    """Return a temporary error while retries are left; then mark the job Failed (LaunchFailed)."""
    retryable = isinstance(error, ForeignChildError) or (isinstance(error, ApiError) and error.temporary)
    if retryable and retry + 1 < runtime.settings.api_retry_limit:
        delay = runtime.settings.backoff(retry)
        attempt = f"attempt {retry + 1} of {runtime.settings.api_retry_limit}"
        kopf.event(body, type="Warning", reason="LaunchRetry", message=f"{error}; {attempt}, retrying in {delay:g} s")
        return kopf.TemporaryError(f"{error} ({attempt}); will retry in {delay:g} s", delay=delay)
    message = f"could not create the job's children: {error}"
    await _fail_launch(body, Reason.LAUNCH_FAILED, message, logger)
    return kopf.PermanentError(message)


async def _fail_launch(body: kopf.Body, reason: Reason, message: str, logger: logging.Logger) -> None:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])

    def failed(fresh: Mapping[str, Any]) -> dict[str, Any]:
        generation = fresh["metadata"].get("generation") or 1
        return job_status.failed_without_job(fresh.get("status") or {}, generation, reason, message)

    await write_status(key, failed)
    kopf.event(body, type="Warning", reason=reason.value, message=message)
    logger.error(message)


@kopf.on.update(*RESOURCE, field="spec")
async def spec_changed(
    body: kopf.Body, spec: kopf.Spec, status: kopf.Status, name: str, namespace: str, uid: str,
    logger: logging.Logger, jobs_by_owner: kopf.Index, launched_specs: kopf.Index, **_: Any,
) -> None:
    """Wake the daemon of a running job; for a finished one, apply run policy changes (the TTL) or warn."""
    key = (namespace, name)
    if status.get("phase") not in job_status.TERMINAL_PHASES:
        runtime.wake(key)
        return

    job = _owned_job(jobs_by_owner.get(key, []), uid)
    launched = _launched_spec(launched_specs.get(key, []), uid)
    rejected = job_status.changed_paths(launched, dict(spec)) if launched is not None else ["spec"]
    if job is not None and not rejected:
        await _sync_job_fields(dict(body), job, logger)
        return
    message = f"the job has finished ({status['phase']}); spec changes have no effect. Delete and re-create it to train again"
    kopf.event(body, type="Warning", reason=Reason.IMMUTABLE_FIELD.value, message=message)
    logger.warning(message)


def _is_unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in job_status.TERMINAL_PHASES


@kopf.daemon(*RESOURCE, when=_is_unfinished, cancellation_timeout=10.0)
async def monitor(
    name: str, namespace: str, stopped: kopf.DaemonStopped, logger: logging.Logger,
    jobs_by_owner: kopf.Index, pods_by_owner: kopf.Index, launched_specs: kopf.Index, **_: Any,
) -> None:
    """Keep the status of one unfinished job current until it finishes; retry API errors without a limit."""
    key = (namespace, name)
    trigger = runtime.trigger(key)
    failures = 0
    while not stopped:
        trigger.clear()
        try:
            finished = await reconcile(key, jobs_by_owner, pods_by_owner, launched_specs, logger)
        except ApiError as error:
            delay = runtime.settings.backoff(failures)
            failures += 1
            logger.warning(f"status update failed ({failures} in a row): {error}; will retry in {delay:g} s")
            await stopped.wait(delay)
            continue
        failures = 0
        if finished:
            break
        await _wait_for(trigger, stopped, runtime.settings.resync_seconds)
    runtime.forget(key)


async def _wait_for(trigger: asyncio.Event, stopped: kopf.DaemonStopped, timeout: float) -> None:
    """Wait for a wake-up, the daemon's stop, or the timeout, whichever comes first."""

    async def until_stopped() -> None:
        await stopped.wait()

    waiters = [asyncio.ensure_future(trigger.wait()), asyncio.ensure_future(until_stopped())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def reconcile(
    key: Key, jobs_by_owner: kopf.Index, pods_by_owner: kopf.Index, launched_specs: kopf.Index,
    logger: logging.Logger,
) -> bool:
    """Bring the status and the Job in step with what the cluster shows; return True once finished."""
    seen: dict[str, Any] = {}

    def desired(fresh: Mapping[str, Any]) -> dict[str, Any]:
        job = _owned_job(jobs_by_owner.get(key, []), fresh["metadata"]["uid"])
        launched = _launched_spec(launched_specs.get(key, []), fresh["metadata"]["uid"])
        rejected = job_status.changed_paths(launched, fresh.get("spec") or {}) if launched is not None else ()
        observation = Observation(
            generation=fresh["metadata"].get("generation") or 1,
            job=job,
            pods=tuple(pods_by_owner.get(key, [])),
            rejected_paths=tuple(rejected),
            pod_state_grace_seconds=runtime.settings.pod_state_grace_seconds,
        )
        seen.update(job=job, body=fresh)
        return job_status.desired_status(fresh.get("status") or {}, observation)

    result = await write_status(key, desired)
    if result is None:
        return True  # the MLTrainingJob is gone
    before, after = result
    _report_transitions(seen["body"], before, after, logger)
    if after.get("phase") in job_status.TERMINAL_PHASES:
        await _stop_leftover_pods(key, pods_by_owner, logger)
        return True
    if seen["job"] is not None:
        await _sync_job_fields(seen["body"], seen["job"], logger)
    return False


def _launched_spec(candidates: Iterable[tuple[str, Mapping[str, Any]]], uid: str) -> Mapping[str, Any] | None:
    return next((spec for owner_uid, spec in candidates if owner_uid == uid), None)


def _owned_job(candidates: Iterable[job_status.JobFacts], uid: str) -> job_status.JobFacts | None:
    return next((job for job in candidates if job.owner_uid == uid), None)


async def write_status(
    key: Key, compute: Callable[[Mapping[str, Any]], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Read the MLTrainingJob, compute its status, and patch it only when it changed.

    Return (before, after), or None when the object no longer exists.
    """
    namespace, name = key
    path = resource_path(api.API_VERSION, api.PLURAL, namespace, name)
    async with runtime.lock(key):
        try:
            fresh = await runtime.client.get(path)
        except ApiError as error:
            if error.not_found:
                return None
            raise
        before = dict(fresh.get("status") or {})
        after = compute(fresh)
        patch = job_status.status_patch(before, after)
        if patch:
            await runtime.client.merge_patch(path + "/status", {"status": patch})
        return before, after


def _report_transitions(body: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any], logger: logging.Logger) -> None:
    if before.get("phase") != after.get("phase"):
        logger.info(f"phase {before.get('phase') or '(none)'} -> {after.get('phase')}: {after.get('message') or ''}".rstrip(": "))
    for condition in job_status.transitions(before, after):
        if condition["type"] == ConditionType.CREATED.value:
            continue  # the launch handler has posted the JobCreated event already
        warning = condition["type"] in (ConditionType.FAILED.value, ConditionType.SPEC_CHANGE_REJECTED.value) and (
            condition["status"] == "True"
        )
        kopf.event(
            dict(body), type="Warning" if warning else "Normal", reason=condition["reason"], message=condition["message"]
        )
        if warning:
            logger.warning(f"{condition['reason']}: {condition['message']}")


async def _sync_job_fields(body: Mapping[str, Any], job: job_status.JobFacts, logger: logging.Logger) -> None:
    """Patch the Job's suspend, deadline and TTL when the spec changed them since the operator last set them."""
    try:
        spec = api.MLTrainingJobSpec.model_validate(body.get("spec") or {})
    except ValidationError:
        return  # an invalid edit is reported as a rejected change; the Job keeps its values
    desired = manifests.mutable_job_fields(spec, runtime.settings)
    changes = {field: value for field, value in desired.items() if job.applied_fields.get(field) != value}
    if not changes:
        return
    namespace = body["metadata"]["namespace"]
    patch = {"metadata": {"annotations": manifests.applied_run_policy_annotation(desired)}, "spec": changes}
    await runtime.client.merge_patch(resource_path("batch/v1", "jobs", namespace, job.name), patch)
    logger.info(f"updated Job {job.name}: {changes}")
    if "suspend" in changes:
        action = "suspended" if changes["suspend"] else "resumed"
        kopf.event(dict(body), type="Normal", reason=action.capitalize(), message=f"{action} Job {job.name}")


async def _stop_leftover_pods(key: Key, pods_by_owner: kopf.Index, logger: logging.Logger) -> None:
    namespace, _ = key
    for pod in list(pods_by_owner.get(key, [])):
        if pod.active and await runtime.client.delete(resource_path("v1", "pods", namespace, pod.name)):
            logger.info(f"deleted pod {pod.name}, which still ran after the job finished")


@kopf.on.delete(*RESOURCE)
async def clean_up(
    name: str, namespace: str, retry: int, logger: logging.Logger,
    pods_by_owner: kopf.Index, **_: Any,
) -> None:
    """Delete the children; owner references let the garbage collector do the same where it runs."""
    key = (namespace, name)
    paths = [
        (resource_path("batch/v1", "jobs", namespace, name), "Background"),
        (resource_path("v1", "services", namespace, manifests.service_name(name)), None),
        (resource_path("v1", "configmaps", namespace, name), None),
    ]
    if runtime.settings.gang_scheduling:
        paths.append((resource_path(manifests.POD_GROUP_API_VERSION, "podgroups", namespace, name), None))
    paths += [(resource_path("v1", "pods", namespace, pod.name), None) for pod in pods_by_owner.get(key, [])]
    try:
        for path, propagation in paths:
            await runtime.client.delete(path, propagation=propagation)
    except ApiError as error:
        if error.temporary and retry + 1 < runtime.settings.api_retry_limit:
            delay = runtime.settings.backoff(retry)
            raise kopf.TemporaryError(f"deleting the children failed: {error}; will retry in {delay:g} s", delay=delay)
        logger.error(f"deleting the children failed: {error}; leaving them to the garbage collector")
    runtime.forget(key)
