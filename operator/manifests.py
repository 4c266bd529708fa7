"""Pure builders of the children of an MLTrainingJob: ConfigMap, headless Service and Indexed Job.

No I/O happens here: every function maps the MLTrainingJob (as a
:class:`JobIdentity` and its validated spec) and the operator's settings to
plain dicts, ready for the API server.  Names are derived from the
MLTrainingJob's name alone, so a handler that runs twice creates nothing twice.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import yaml
from pydantic import ValidationError

from quanttrain.operator import api
from quanttrain.operator.api import MLTrainingJobSpec, VolumeSource
from quanttrain.operator.settings import OperatorSettings
from quanttrain.operator.status import APPLIED_RUN_POLICY_KEY, COMPLETION_INDEX_KEY, TRAINER_CONTAINER
from quanttrain.trainer.config import rule_violations, violations_from_validation_error
from quanttrain.trainer.summary import PERMANENT_EXIT_CODES

JOB_FILE_DIR = "/etc/quanttrain"
JOB_FILE_NAME = "job.yaml"
JOB_FILE = f"{JOB_FILE_DIR}/{JOB_FILE_NAME}"
TERMINATION_LOG = "/dev/termination-log"
# The non-root user of the trainer image (Dockerfile.trainer).
TRAINER_UID = 1000
SERVICE_SUFFIX = "-workers"
# Pod host names are "<job>-<index>", a DNS label of at most 63 characters.
MAX_DNS_LABEL = 63
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Volcano reads the pod group of a pod from this annotation.
POD_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
POD_GROUP_API_VERSION = "scheduling.volcano.sh/v1beta1"
# Shared memory for torch's DataLoader workers and gloo; the container default is 64 MiB.
SHM_SIZE_LIMIT = "1Gi"
TMP_SIZE_LIMIT = "2Gi"
# torchrun under the trainer's launcher, which keeps the workers' permanent exit codes.
TRAINER_LAUNCHER_MODULE = "quanttrain.trainer.launcher"
# Seconds the c10d rendezvous store client waits to connect to pod 0 and for each store operation
# (torch's default is 60): pod 0's DNS record may appear only after its container starts.
RENDEZVOUS_READ_TIMEOUT_SECONDS = 300


@dataclasses.dataclass(frozen=True)
class JobIdentity:
    """The metadata of an MLTrainingJob that its children depend on."""

    name: str
    namespace: str
    uid: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobIdentity:
        metadata = body["metadata"]
        return cls(
            name=metadata["name"], namespace=metadata["namespace"], uid=metadata["uid"],
            labels=dict(metadata.get("labels") or {}),
        )


def service_name(job_name: str) -> str:
    return f"{job_name}{SERVICE_SUFFIX}"


def name_problems(job_name: str, nodes: int) -> list[str]:
    """Return why a job of this name cannot run (its pod host names or Service name would be too long)."""
    problems = []
    longest_host = f"{job_name}-{nodes - 1}"
    if len(longest_host) > MAX_DNS_LABEL or len(job_name) > api.MAX_NAME_LENGTH:
        problems.append(
            f"metadata.name {job_name!r} has {len(job_name)} characters; at most {api.MAX_NAME_LENGTH} are allowed, "
            f"so that pod host names such as {longest_host!r} stay within {MAX_DNS_LABEL}"
        )
    return problems


def spec_problems(job_name: str, raw_spec: Mapping[str, Any]) -> tuple[MLTrainingJobSpec | None, list[str]]:
    """Validate a spec as the trainer will, plus the name rules; return the parsed spec or every problem.

    Each problem starts with its field path, e.g. ``spec.features.trainSplitRatio: ...``.
    """
    try:
        spec = MLTrainingJobSpec.model_validate(dict(raw_spec))
    except ValidationError as error:
        return None, [f"spec.{violation}" for violation in violations_from_validation_error(error)]
    problems = [f"spec.{violation}" for violation in rule_violations(spec)]
    problems += name_problems(job_name, node_count(spec))
    return (None, problems) if problems else (spec, [])


def owner_reference(job: JobIdentity) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(job: JobIdentity, component: str) -> dict[str, str]:
    """Labels of every child; the job-name label is how the operator finds them."""
    return {
        api.LABEL_JOB_NAME: job.name,
        "app.kubernetes.io/name": "quanttrain",
        "app.kubernetes.io/instance": job.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": "quanttrain-operator",
    }


def _metadata(job: JobIdentity, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, component),
        "ownerReferences": [owner_reference(job)],
    }


def build_configmap(job: JobIdentity, raw_spec: Mapping[str, Any]) -> dict[str, Any]:
    """Build the ConfigMap with the MLTrainingJob itself (name, namespace, uid, spec) as ``job.yaml``, the trainer's input."""
    document = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": job.name, "namespace": job.namespace, "uid": job.uid},
        "spec": dict(raw_spec),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, job.name, "config"),
        "data": {JOB_FILE_NAME: yaml.safe_dump(document, sort_keys=False, allow_unicode=True)},
    }


def build_service(job: JobIdentity, settings: OperatorSettings) -> dict[str, Any]:
    """Build the headless Service that gives each pod the DNS name ``<job>-<index>.<service>``, ready or not."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, service_name(job.name), "workers"),
        "spec": {
            "clusterIP": "None",
            # torchrun on every node resolves pod 0 before any pod is ready.
            "publishNotReadyAddresses": True,
            "selector": {api.LABEL_JOB_NAME: job.name},
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port, "targetPort": settings.rendezvous_port}],
        },
    }


def node_count(spec: MLTrainingJobSpec) -> int:
    return spec.distributed.nodes if spec.distributed.enabled else 1


def active_deadline_seconds(spec: MLTrainingJobSpec, settings: OperatorSettings) -> int:
    """Return the run policy's deadline, or the training budget plus the operator's margin."""
    if spec.run_policy.active_deadline_seconds is not None:
        return spec.run_policy.active_deadline_seconds
    return spec.training.max_training_time_minutes * 60 + settings.deadline_margin_seconds


def mutable_job_fields(spec: MLTrainingJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Return the Job fields that follow the spec after launch (a JSON merge patch of the Job's spec)."""
    return {
        "suspend": spec.run_policy.suspend,
        "activeDeadlineSeconds": active_deadline_seconds(spec, settings),
        "ttlSecondsAfterFinished": spec.run_policy.ttl_seconds_after_finished,
    }


def build_job(job: JobIdentity, spec: MLTrainingJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    """Build the Indexed Job: one pod per node, all retried together under the run policy."""
    nodes = node_count(spec)
    metadata = _metadata(job, job.name, "trainer")
    if KUEUE_QUEUE_LABEL in job.labels:
        metadata["labels"][KUEUE_QUEUE_LABEL] = job.labels[KUEUE_QUEUE_LABEL]
    job_spec: dict[str, Any] = {
        "completions": nodes,
        "parallelism": nodes,
        "completionMode": "Indexed",
        "backoffLimit": spec.run_policy.backoff_limit,
        "podFailurePolicy": pod_failure_policy(),
        "template": build_pod_template(job, spec, settings),
    }
    mutable = mutable_job_fields(spec, settings)
    job_spec.update({key: value for key, value in mutable.items() if value is not None})
    metadata["annotations"] = applied_run_policy_annotation(mutable)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def applied_run_policy_annotation(fields: Mapping[str, Any]) -> dict[str, str]:
    """Record what the operator set on the Job.

    A later change of the spec is then distinguished from another controller's change of the Job,
    because Kueue suspends and resumes Jobs itself.
    """
    return {APPLIED_RUN_POLICY_KEY: json.dumps(dict(fields), sort_keys=True)}


def pod_failure_policy() -> dict[str, Any]:
    """Fail the Job at once on the trainer's permanent exit codes; evictions and preemptions do not count."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": TRAINER_CONTAINER,
                    "operator": "In",
                    "values": list(PERMANENT_EXIT_CODES),
                },
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def build_pod_template(job: JobIdentity, spec: MLTrainingJobSpec, settings: OperatorSettings) -> dict[str, Any]:
    volumes, mounts = _volumes(job, spec, settings)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the pod failure policy requires it; the Job retries pods
        "subdomain": service_name(job.name),
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_trainer_container(job, spec, settings, mounts)],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [toleration.to_spec() for toleration in spec.tolerations]
    if settings.trainer_image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings.trainer_image_pull_secrets]
    if settings.scheduler_name:
        pod_spec["schedulerName"] = settings.scheduler_name

    metadata: dict[str, Any] = {"labels": labels(job, "trainer")}
    if settings.gang_scheduling and node_count(spec) > 1:
        metadata["annotations"] = {POD_GROUP_ANNOTATION: job.name}
    return {"metadata": metadata, "spec": pod_spec}


def trainer_command(
    job: JobIdentity, spec: MLTrainingJobSpec, settings: OperatorSettings, registry_path: str,
    data_path: str | None = None,
) -> list[str]:
    """``python -m quanttrain.trainer`` on one node; the same module under the torchrun launcher when distributed."""
    trainer_args = [
        "--spec", JOB_FILE, "--registry", registry_path, "--termination-log", TERMINATION_LOG,
    ]
    if data_path:
        trainer_args += ["--data-dir", data_path]  # relative dataset paths resolve against the volume
    if not spec.distributed.enabled:
        return ["python", "-m", "quanttrain.trainer", *trainer_args]
    endpoint = f"{job.name}-0.{service_name(job.name)}.{job.namespace}.svc:{settings.rendezvous_port}"
    # torch parses --rdzv-conf as comma-separated key=value pairs.
    rendezvous_conf = (
        f"join_timeout={settings.rendezvous_timeout_seconds},read_timeout={RENDEZVOUS_READ_TIMEOUT_SECONDS}"
    )
    # The launcher runs torchrun and exits with the workers' permanent codes, which torchrun turns into 1.
    return [
        "python", "-m", TRAINER_LAUNCHER_MODULE,
        f"--nnodes={node_count(spec)}",
        f"--nproc-per-node={spec.distributed.procs_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={job.uid}",
        f"--rdzv-conf={rendezvous_conf}",
        f"--max-restarts={settings.torchrun_max_restarts}",
        "-m", "quanttrain.trainer",
        *trainer_args,
    ]


def _trainer_container(
    job: JobIdentity, spec: MLTrainingJobSpec, settings: OperatorSettings, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    paths = {mount["name"]: mount["mountPath"] for mount in mounts}
    resources: dict[str, Any] = {
        "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
        "limits": {"memory": spec.resources.memory},
    }
    if spec.training.gpu_enabled and spec.resources.gpus_per_node > 0:
        resources["limits"]["nvidia.com/gpu"] = str(spec.resources.gpus_per_node)
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.image or settings.trainer_image,
        "command": trainer_command(job, spec, settings, paths["registry"], paths.get("datasets")),
        "env": _environment(job),
        "resources": resources,
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # The trainer writes its summary there; a crash leaves the log tail instead.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if spec.distributed.enabled:
        container["ports"] = [{"name": "rendezvous", "containerPort": settings.rendezvous_port, "protocol": "TCP"}]
    return container


def _environment(job: JobIdentity) -> list[dict[str, Any]]:
    return [
        {"name": "QUANTTRAIN_JOB_NAME", "value": job.name},
        {"name": "QUANTTRAIN_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {
            "name": "JOB_COMPLETION_INDEX",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_KEY}']"}},
        },
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The root filesystem is read-only: caches and temporary files go to the /tmp emptyDir.
        {"name": "HOME", "value": "/tmp"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "MPLCONFIGDIR", "value": "/tmp/matplotlib"},
    ]


def _volumes(
    job: JobIdentity, spec: MLTrainingJobSpec, settings: OperatorSettings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "job-spec", "configMap": {"name": job.name}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE_LIMIT}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE_LIMIT}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "job-spec", "mountPath": JOB_FILE_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    datasets = spec.storage.datasets or _default_volume(
        settings.datasets_pvc, settings.datasets_mount_path, settings.datasets_read_only
    )
    if datasets is not None:
        volumes.append(_volume("datasets", datasets, host_path_type="Directory"))
        mounts.append({"name": "datasets", "mountPath": datasets.mount_path, "readOnly": datasets.read_only})
    registry = spec.storage.registry or _default_volume(
        settings.registry_pvc, settings.registry_mount_path, settings.registry_read_only
    ) or VolumeSource(mount_path=settings.registry_mount_path)
    volumes.append(_volume("registry", registry, host_path_type="DirectoryOrCreate"))
    mounts.append({"name": "registry", "mountPath": registry.mount_path, "readOnly": registry.read_only})
    return volumes, mounts


def _default_volume(claim: str | None, mount_path: str, read_only: bool) -> VolumeSource | None:
    if not claim:
        return None
    return VolumeSource(persistent_volume_claim=claim, mount_path=mount_path, read_only=read_only)


def _volume(name: str, source: VolumeSource, *, host_path_type: str) -> dict[str, Any]:
    if source.persistent_volume_claim:
        return {"name": name, "persistentVolumeClaim": {"claimName": source.persistent_volume_claim, "readOnly": source.read_only}}
    if source.host_path:
        return {"name": name, "hostPath": {"path": source.host_path, "type": host_path_type}}
    return {"name": name, "emptyDir": {}}


def build_pod_group(job: JobIdentity, spec: MLTrainingJobSpec) -> dict[str, Any]:
    """Build a Volcano PodGroup, so that the scheduler starts all pods of a distributed job together or none."""
    metadata = _metadata(job, job.name, "trainer")
    return {
        "apiVersion": POD_GROUP_API_VERSION,
        "kind": "PodGroup",
        "metadata": metadata,
        "spec": {"minMember": node_count(spec)},
    }


def build_children(
    job: JobIdentity, spec: MLTrainingJobSpec, raw_spec: Mapping[str, Any], settings: OperatorSettings
) -> list[dict[str, Any]]:
    """Build every child, in creation order: the ConfigMap and the Service exist before any pod starts."""
    children = [build_configmap(job, raw_spec), build_service(job, settings)]
    if settings.gang_scheduling and node_count(spec) > 1:
        children.append(build_pod_group(job, spec))
    children.append(build_job(job, spec, settings))
    return children
