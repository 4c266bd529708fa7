"""kmock's Kubernetes emulator, completed with what kopf needs, and a stand-in for the Job controller.

kmock 0.8's ``KubernetesEmulator`` stores objects and streams watch events,
but it leaves out server-side metadata.  :class:`ClusterEmulator` adds:

* ``uid``, ``creationTimestamp``, ``generation``, the namespace from the URL and a
  name from ``generateName`` on create;
* a ``resourceVersion`` that grows on every change, and HTTP 422 when a JSON
  patch's ``test`` of it fails (kopf's optimistic concurrency relies on both);
* ``generation`` + 1 when a patch of the main resource changes ``spec``;
* :meth:`wait_for`, which awaits a condition on the stored objects, woken by
  every change instead of sleeping.

:class:`JobController` plays the parts of the Kubernetes Job controller that
the tests need: it creates the pods of an Indexed Job and sets pod and Job
statuses through the API, so the operator sees real watch events.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
import uuid
from typing import Any, Callable

import jsonpatch
import kmock
from kmock._internal import enums

RESOURCES = {
    "quanttrain.io/v1alpha1/mltrainingjobs": dict(
        kind="MLTrainingJob", namespaced=True, singular="mltrainingjob", subresources={"status"},
        verbs={"list", "watch", "get", "create", "patch", "delete"},
    ),
    "batch/v1/jobs": dict(kind="Job", namespaced=True, singular="job", subresources={"status"},
                          verbs={"list", "watch", "get", "create", "patch", "delete"}),
    "v1/pods": dict(kind="Pod", namespaced=True, singular="pod", subresources={"status"},
                    verbs={"list", "watch", "get", "create", "patch", "delete"}),
    "v1/configmaps": dict(kind="ConfigMap", namespaced=True, singular="configmap",
                          verbs={"list", "watch", "get", "create", "patch", "delete"}),
    "v1/services": dict(kind="Service", namespaced=True, singular="service",
                        verbs={"list", "watch", "get", "create", "patch", "delete"}),
    "v1/namespaces": dict(kind="Namespace", namespaced=False, singular="namespace", verbs={"list", "watch", "get"}),
    "v1/events": dict(kind="Event", namespaced=True, singular="event", verbs={"list", "create", "patch"}),
}
MLTJ = "quanttrain.io/v1alpha1/mltrainingjobs"
JOBS = "batch/v1/jobs"
PODS = "v1/pods"
CONFIGMAPS = "v1/configmaps"
SERVICES = "v1/services"
EVENTS = "v1/events"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ClusterEmulator(kmock.KubernetesEmulator):
    """The emulator with server-side metadata and change notifications."""

    # kmock matches each request against every earlier one (for slices such as ``[:1]``),
    # so the cost grows quadratically. A benchmark that injects no errors turns the history off.
    keep_history = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)
        self._changed: asyncio.Condition | None = None
        self._watched: set[tuple[str, str, str]] = set()
        self.creations: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        for key, info in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(**info)

    async def _handle(self, request: kmock.Request) -> Any:
        if not self.keep_history:
            del self._requests[:-1]
        if request.resource is not None and isinstance(request.data, (dict, list)):
            self._complete(request)
        if request.action == enums.action.WATCH:
            self._watched.add(_resource_key(request.resource))
            await self._notify()  # a watch streams until it is cancelled: announce its arrival now
        created = self._new_object_key(request)
        try:
            response = await super()._handle(request)
            if created is not None:  # stored even when the response is an injected error
                self.creations[created] += 1
            return response
        finally:
            await self._notify()

    def _new_object_key(self, request: kmock.Request) -> tuple[str, str, str, str] | None:
        if request.action != enums.action.CREATE or not isinstance(request.data, dict):
            return None
        metadata = request.data.get("metadata") or {}
        key = (request.resource, metadata.get("namespace"), metadata.get("name"))
        if key in self.objects and not self.objects[key].deleted:
            return None  # the emulator responds with 409
        return (*_resource_key(request.resource), metadata.get("namespace"), metadata.get("name"))

    def _complete(self, request: kmock.Request) -> None:
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            if request.namespace:
                metadata["namespace"] = request.namespace
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = metadata["generateName"] + uuid.uuid4().hex[:5]
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", _now())
            metadata["generation"] = 1
            metadata["resourceVersion"] = str(next(self._versions))
        elif request.action == enums.action.UPDATE and request.name is not None:
            self._complete_patch(request)

    def _complete_patch(self, request: kmock.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # the emulator responds with 404 itself
        current = self.objects[key].raw
        version = str(next(self._versions))
        if isinstance(request.data, list):
            try:
                patched = jsonpatch.apply_patch(current, request.data, in_place=False)
            except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchTestFailed) as error:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from error
            request.data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
            spec_changed = patched.get("spec") != current.get("spec")
            if spec_changed and request.subresource is None:
                generation = current["metadata"].get("generation", 1) + 1
                request.data.append({"op": "replace", "path": "/metadata/generation", "value": generation})
        else:
            metadata = request.data.setdefault("metadata", {})
            metadata["resourceVersion"] = version
            spec = request.data.get("spec")
            if request.subresource is None and spec is not None and _changes(current.get("spec") or {}, spec):
                metadata["generation"] = current["metadata"].get("generation", 1) + 1

    async def _notify(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        """Await until ``predicate()`` is truthy; return its value, or fail after ``timeout`` seconds."""
        if self._changed is None:
            self._changed = asyncio.Condition()

        async def until() -> Any:
            async with self._changed:
                while not (value := predicate()):
                    await self._changed.wait()
                return value

        try:
            return await asyncio.wait_for(until(), timeout)
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}") from None

    # -- reading stored objects -------------------------------------------------

    def stored(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return self.objects[key].raw

    def stored_all(self, resource: str, namespace: str) -> list[dict[str, Any]]:
        expected = kmock.resource(resource)
        return [
            obj.raw for (res, ns, _), obj in self.objects.items()
            if res == expected and ns == namespace and not obj.deleted
        ]

    def created_count(self, resource: str, namespace: str, name: str) -> int:
        """How many create requests for this object succeeded (more than one means a duplicate)."""
        return self.creations[(*_resource_key(kmock.resource(resource)), namespace, name)]

    def watched(self, resource: str) -> bool:
        return _resource_key(kmock.resource(resource)) in self._watched


def _resource_key(resource: kmock.resource) -> tuple[str, str, str]:
    return (resource.group or "", resource.version or "", resource.plural or "")


def _changes(current: dict[str, Any], patch: dict[str, Any]) -> bool:
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            if _changes(current[key], value):
                return True
        elif current.get(key) != value:
            return True
    return False


def status_of(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("status") or {}


class JobController:
    """Creates and finishes the pods of the operator's Indexed Jobs through the emulator's API."""

    def __init__(self, emulator: ClusterEmulator, namespace: str) -> None:
        self.emulator = emulator
        self.namespace = namespace
        self._attempts = itertools.count()

    async def _call(self, method: str, path: str, body: Any, content_type: str = "application/json") -> dict[str, Any]:
        headers = {"Content-Type": content_type}
        async with self.emulator.request(method, path, json=body, headers=headers) as response:
            payload = await response.json()
            assert response.status < 400, f"{method} {path}: {response.status} {payload}"
            return payload

    def _base(self, resource: str) -> str:
        prefix = "/api/v1" if resource.startswith("v1/") else f"/apis/{resource.rsplit('/', 1)[0]}"
        return f"{prefix}/namespaces/{self.namespace}/{resource.rsplit('/', 1)[1]}"

    async def start_pod(self, job_name: str, index: int, *, phase: str = "Running") -> str:
        """Create pod ``index`` of a Job from its template, as the Job controller does."""
        job = self.emulator.stored(JOBS, self.namespace, job_name)
        assert job is not None, f"Job {job_name} does not exist"
        template = job["spec"]["template"]
        name = f"{job_name}-{index}-{next(self._attempts):05d}"
        labels = {**template["metadata"]["labels"], "batch.kubernetes.io/job-completion-index": str(index)}
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": self.namespace, "labels": labels,
                "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                     "uid": job["metadata"]["uid"], "controller": True}],
            },
            "spec": {**template["spec"], "hostname": f"{job_name}-{index}"},
            "status": {"phase": phase},
        }
        if phase == "Running":
            pod["status"]["containerStatuses"] = [
                {"name": "trainer", "state": {"running": {"startedAt": _now()}}}
            ]
        await self._call("POST", self._base(PODS), pod)
        return name

    async def finish_pod(self, pod_name: str, exit_code: int, message: str = "") -> None:
        phase = "Succeeded" if exit_code == 0 else "Failed"
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message, "startedAt": _now(), "finishedAt": _now()}
        status = {"status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]}}
        await self._call("PATCH", f"{self._base(PODS)}/{pod_name}/status", status, "application/merge-patch+json")

    async def set_job_status(self, job_name: str, **status: Any) -> None:
        await self._call("PATCH", f"{self._base(JOBS)}/{job_name}/status", {"status": status}, "application/merge-patch+json")

    async def complete_job(self, job_name: str, succeeded: int) -> None:
        condition = {"type": "Complete", "status": "True", "lastTransitionTime": _now()}
        await self.set_job_status(job_name, active=0, succeeded=succeeded, completionTime=_now(), conditions=[condition])

    async def fail_job(self, job_name: str, failed: int, reason: str = "BackoffLimitExceeded", message: str = "") -> None:
        condition = {"type": "Failed", "status": "True", "reason": reason, "message": message or reason,
                     "lastTransitionTime": _now()}
        await self.set_job_status(job_name, active=0, failed=failed, conditions=[condition])

    async def create(self, resource: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", self._base(resource), body)

    async def patch(self, resource: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PATCH", f"{self._base(resource)}/{name}", patch, "application/merge-patch+json")

    async def delete(self, resource: str, name: str) -> None:
        async with self.emulator.request("DELETE", f"{self._base(resource)}/{name}") as response:
            assert response.status < 400, f"DELETE {name}: {response.status}"
