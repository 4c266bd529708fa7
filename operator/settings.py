"""The operator's settings, read from ``QUANTTRAIN_*`` environment variables.

Every field maps to ``QUANTTRAIN_<FIELD NAME IN UPPER CASE>``; for example
``trainer_image`` is read from ``QUANTTRAIN_TRAINER_IMAGE``.  Lists are
comma-separated.  The Helm chart sets these on the operator's Deployment.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "QUANTTRAIN_"


def _package_version() -> str:
    try:
        return metadata.version("quanttrain")
    except metadata.PackageNotFoundError:
        return "latest"


class OperatorSettings(BaseModel):
    """Defaults for the children the operator creates, and how it talks to the API server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trainer_image: str = Field(
        default_factory=lambda: f"quanttrain-trainer:{_package_version()}",
        min_length=1,
        description="Trainer image for jobs without spec.image (built from Dockerfile.trainer).",
    )
    trainer_image_pull_secrets: tuple[str, ...] = Field(
        default=(), description="Secrets in the job's namespace for pulling the trainer image."
    )
    datasets_pvc: str | None = Field(default=None, description="PVC with the training data, for jobs without spec.storage.datasets.")
    datasets_mount_path: str = Field(default="/data", pattern=r"^/", description="Where the default datasets volume is mounted.")
    datasets_read_only: bool = Field(default=True, description="Mount the default datasets volume read-only.")
    registry_pvc: str | None = Field(default=None, description="PVC of the model registry, for jobs without spec.storage.registry.")
    registry_mount_path: str = Field(
        default="/registry", pattern=r"^/",
        description="Where the registry is mounted; an emptyDir (lost with the pod) when no volume is set.",
    )
    registry_read_only: bool = Field(default=False, description="Mount the default registry volume read-only.")
    scheduler_name: str | None = Field(default=None, description="Scheduler of the trainer pods; the cluster default when unset.")
    gang_scheduling: bool = Field(
        default=False,
        description="Ask the scheduler (schedulerName, e.g. volcano) to start all pods of a distributed job together.",
    )
    rendezvous_port: int = Field(default=29500, ge=1, le=65535, description="torchrun's c10d rendezvous port on pod 0.")
    rendezvous_timeout_seconds: int = Field(
        default=900, ge=30,
        description="How long torchrun waits for every node to join; covers image pulls and the DNS record of pod 0 appearing.",
    )
    torchrun_max_restarts: int = Field(
        default=3, ge=0, le=100, description="Times torchrun restarts all workers after one fails, before the pod fails."
    )
    deadline_margin_seconds: int = Field(
        default=900, ge=0,
        description="Added to maxTrainingTimeMinutes for activeDeadlineSeconds when runPolicy leaves it unset: "
        "scheduling, image pull, data loading and evaluation.",
    )
    api_retry_limit: int = Field(default=8, ge=1, le=100, description="Attempts of a failed launch before the job is marked Failed.")
    api_backoff_seconds: float = Field(
        default=1.0, gt=0, description="First retry delay after a temporary API error; doubles on each retry."
    )
    api_max_backoff_seconds: float = Field(default=60.0, gt=0, description="Maximum retry delay.")
    api_timeout_seconds: float = Field(default=30.0, gt=0, description="Timeout of one API request.")
    namespace_scanning: bool = Field(
        default=False,
        description="List and watch namespaces and CRDs, so that --namespace globs such as 'team-*' work and "
        "new namespaces are noticed; needs RBAC to list and watch namespaces and CRDs.",
    )
    resync_seconds: float = Field(
        default=60.0, gt=0, description="Maximum time between two status checks of a running job without any event."
    )
    pod_state_grace_seconds: float = Field(
        default=30.0, ge=0,
        description="How long to wait, once the Job has finished, for the final states of its pods (the trainer's "
        "summary among them) to be observed before the outcome is written without them.",
    )

    @field_validator("trainer_image_pull_secrets", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("datasets_pvc", "registry_pvc", "scheduler_name", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (0 for the first retry): exponential, capped."""
        return min(self.api_backoff_seconds * 2 ** retry, self.api_max_backoff_seconds)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        """Read the settings from the environment; raise ValueError naming each bad variable."""
        environ = os.environ if environ is None else environ
        values = {
            name: environ[ENV_PREFIX + name.upper()]
            for name in cls.model_fields
            if ENV_PREFIX + name.upper() in environ
        }
        try:
            return cls(**values)
        except ValidationError as error:
            problems = [
                f"{ENV_PREFIX}{str(item['loc'][0]).upper()}={item.get('input')!r}: {item['msg']}"
                for item in error.errors(include_url=False)
            ]
            raise ValueError("invalid operator settings:\n  " + "\n  ".join(problems)) from error
