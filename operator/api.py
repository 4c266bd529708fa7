"""The MLTrainingJob API types: the trainer's configuration plus Kubernetes-facing fields.

``MLTrainingJobSpec`` extends :class:`~quanttrain.trainer.config.TrainingJobConfig`
with the fields only the operator reads (image, resources, scheduling, run
policy, storage).  The CRD schema is generated from these models, so the API
server enforces the same enums and ranges that the converter checks.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

from pydantic import Field

from quanttrain.trainer.config import CamelModel, TrainingJobConfig

GROUP = "quanttrain.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MLTrainingJob"
PLURAL = "mltrainingjobs"
SINGULAR = "mltrainingjob"
SHORT_NAMES = ["mltj"]
CATEGORIES = ["quanttrain"]

# Label keys set on every child object.
LABEL_JOB_NAME = f"{GROUP}/job-name"
LABEL_REPLICA_INDEX = f"{GROUP}/replica-index"

# Kubernetes object names are DNS-1123 labels when they become pod host names.
# Pod names add "-<index>-<suffix>" to the Job name, so job names stay short.
MAX_NAME_LENGTH = 52


class ResourceSettings(CamelModel):
    """Per-pod compute requests."""

    cpu: str = Field(default="2", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request, e.g. '2' or '500m'.")
    memory: str = Field(
        default="8Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|K|M|G|T)?$", description="Memory request, e.g. '8Gi'."
    )
    gpus_per_node: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu limit per pod.")


class Toleration(CamelModel):
    """A pod toleration, as in core/v1."""

    key: str | None = Field(default=None, description="Taint key to tolerate; empty with Exists matches every key.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="How key and value are compared.")
    value: str | None = Field(default=None, description="Taint value to match with Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: seconds the pod stays bound after the taint appears."
    )


class RunPolicy(CamelModel):
    """Run and clean-up settings of the Job, as in Kubeflow's run policy."""

    backoff_limit: int = Field(default=3, ge=0, le=100, description="Pod retries before the job fails.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Wall-clock limit for the whole job; unset derives it from maxTrainingTimeMinutes."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished Job and its pods after this many seconds."
    )
    suspend: bool = Field(default=False, description="Create the Job suspended; flip to false to start it.")


class VolumeSource(CamelModel):
    """Volume of datasets or of the registry in a pod: a PVC, a host path, or an emptyDir."""

    persistent_volume_claim: str | None = Field(default=None, description="Name of a PersistentVolumeClaim.")
    host_path: str | None = Field(default=None, description="Path on the node (single-node clusters only).")
    read_only: bool = Field(default=False, description="Mount read-only.")
    mount_path: str = Field(pattern=r"^/", description="Where the volume is mounted in the trainer container.")


class StorageSettings(CamelModel):
    """Volumes for datasets and the model registry."""

    datasets: VolumeSource | None = Field(default=None, description="Volume holding the training data.")
    registry: VolumeSource | None = Field(default=None, description="Volume holding the model registry.")


class MLTrainingJobSpec(TrainingJobConfig):
    """The spec of an MLTrainingJob."""

    image: str | None = Field(default=None, description="Trainer image; the operator's default when unset.")
    resources: ResourceSettings = Field(default_factory=lambda: ResourceSettings())
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Pod tolerations.")
    run_policy: RunPolicy = Field(default_factory=lambda: RunPolicy())
    storage: StorageSettings = Field(default_factory=lambda: StorageSettings())


def kubernetes_name(text: str) -> str:
    """Turn a strategy name into a valid, stable DNS-1123 label.

    Accents are stripped, anything else that is not a letter or digit becomes
    a hyphen, and long names are cut to :data:`MAX_NAME_LENGTH`.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    name = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    name = name[:MAX_NAME_LENGTH].rstrip("-")
    return name or "strategy"


def build_resource(
    name: str,
    spec: MLTrainingJobSpec,
    *,
    namespace: str | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Build an MLTrainingJob document (a plain dict, ready for YAML)."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if labels:
        metadata["labels"] = dict(sorted(labels.items()))
    if annotations:
        metadata["annotations"] = dict(sorted(annotations.items()))
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec.to_spec()}
