"""The pure builders of an MLTrainingJob's children, validated against Kubernetes' own schemas."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from operator_fixtures import job_spec
from quanttrain.operator import manifests
from quanttrain.operator.api import MLTrainingJobSpec
from quanttrain.operator.settings import OperatorSettings
from quanttrain.trainer.summary import PERMANENT_EXIT_CODES

KUBERNETES_VERSION = kubernetes_validate.utils.latest_version()
JOB = manifests.JobIdentity(name="sp500-rf", namespace="quant", uid="5a1d6c3e-0000-4000-8000-000000000001")
SETTINGS = OperatorSettings(trainer_image="registry.example/quanttrain-trainer:1.0")

DISTRIBUTED = {"distributed": {"enabled": True, "nodes": 2, "procsPerNode": 4}}
GPU = {
    "training": {"gpuEnabled": True, "maxTrainingTimeMinutes": 30},
    "resources": {"cpu": "8", "memory": "32Gi", "gpusPerNode": 2},
    "nodeSelector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}
STORAGE = {
    "storage": {
        "datasets": {"persistentVolumeClaim": "market-data", "mountPath": "/data", "readOnly": True},
        "registry": {"hostPath": "/srv/registry", "mountPath": "/models"},
    }
}
RUN_POLICY = {"runPolicy": {"backoffLimit": 1, "activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": 600, "suspend": True}}

CASES = {
    "single-node": {},
    "distributed": DISTRIBUTED,
    "gpu": {**GPU, **DISTRIBUTED},
    "storage": STORAGE,
    "run-policy": RUN_POLICY,
    "image": {"image": "registry.example/custom:2"},
}


def spec_for(case: str) -> tuple[MLTrainingJobSpec, dict[str, Any]]:
    raw = job_spec(**CASES[case])
    return MLTrainingJobSpec.model_validate(raw), raw


def children(case: str, settings: OperatorSettings = SETTINGS, job: manifests.JobIdentity = JOB) -> dict[str, dict[str, Any]]:
    spec, raw = spec_for(case)
    return {child["kind"]: child for child in manifests.build_children(job, spec, raw, settings)}


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["ConfigMap", "Service", "Job"])
def test_children_validate_strictly(case, kind):
    kubernetes_validate.validate(children(case)[kind], KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_children_are_owned_and_labelled(case):
    for child in children(case).values():
        metadata = child["metadata"]
        owner = metadata["ownerReferences"][0]
        assert owner["uid"] == JOB.uid
        assert owner["controller"] is True
        assert owner["blockOwnerDeletion"] is True
        assert metadata["labels"]["quanttrain.io/job-name"] == JOB.name
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "quanttrain-operator"
        assert len(metadata["name"]) <= 63


def test_names_are_deterministic():
    names = {kind: child["metadata"]["name"] for kind, child in children("single-node").items()}
    assert names == {"ConfigMap": "sp500-rf", "Service": "sp500-rf-workers", "Job": "sp500-rf"}


def test_configmap_holds_the_job_document():
    spec, raw = spec_for("single-node")
    document = yaml.safe_load(children("single-node")["ConfigMap"]["data"]["job.yaml"])
    assert document["kind"] == "MLTrainingJob"
    assert document["metadata"] == {"name": JOB.name, "namespace": JOB.namespace, "uid": JOB.uid}
    assert document["spec"] == raw


def test_service_is_headless_and_publishes_unready_pods():
    service = children("distributed")["Service"]["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is True
    assert service["selector"] == {"quanttrain.io/job-name": JOB.name}


@pytest.mark.parametrize(("case", "nodes"), [("single-node", 1), ("distributed", 2)])
def test_job_is_indexed_with_one_pod_per_node(case, nodes):
    job = children(case)["Job"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == nodes
    assert job["parallelism"] == nodes
    assert job["template"]["spec"]["subdomain"] == "sp500-rf-workers"
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_single_node_runs_the_trainer_directly():
    assert container(children("single-node")["Job"])["command"] == [
        "python", "-m", "quanttrain.trainer", "--spec", "/etc/quanttrain/job.yaml",
        "--registry", "/registry", "--termination-log", "/dev/termination-log",
    ]


def test_distributed_runs_launcher_with_pod_zero_endpoint():
    command = container(children("distributed")["Job"])["command"]
    assert command[:8] == [
        "python", "-m", "quanttrain.trainer.launcher", "--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d",
        "--rdzv-endpoint=sp500-rf-0.sp500-rf-workers.quant.svc:29500", f"--rdzv-id={JOB.uid}",
    ]
    assert "--max-restarts=3" in command
    assert command[command.index("-m", 3) + 1] == "quanttrain.trainer"


def test_rendezvous_conf_parses_with_torch():
    rendezvous_utils = pytest.importorskip("torch.distributed.elastic.rendezvous.utils")
    command = container(children("distributed")["Job"])["command"]
    conf = next(part.split("=", 1)[1] for part in command if part.startswith("--rdzv-conf="))
    assert rendezvous_utils._parse_rendezvous_config(conf) == {"join_timeout": "900", "read_timeout": "300"}


def test_pod_failure_policy_fails_on_permanent_exit_codes():
    rules = children("single-node")["Job"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == list(PERMANENT_EXIT_CODES)
    assert rules[0]["onExitCodes"]["containerName"] == "trainer"
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


def test_deadline_derives_from_training_time_plus_margin():
    job = children("single-node")["Job"]["spec"]
    assert job["activeDeadlineSeconds"] == 30 * 60 + SETTINGS.deadline_margin_seconds
    assert job["backoffLimit"] == 3
    assert job["suspend"] is False
    assert "ttlSecondsAfterFinished" not in job


def test_run_policy_reaches_the_job():
    job = children("run-policy")["Job"]["spec"]
    assert job["backoffLimit"] == 1
    assert job["activeDeadlineSeconds"] == 7200
    assert job["ttlSecondsAfterFinished"] == 600
    assert job["suspend"] is True


def test_pod_runs_restricted_without_credentials():
    pod = children("single-node")["Job"]["spec"]["template"]["spec"]
    security = container(children("single-node")["Job"])["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["fsGroup"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}


def test_pod_has_writable_tmp_and_shared_memory():
    mounts = {mount["mountPath"]: mount["name"] for mount in container(children("single-node")["Job"])["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in children("single-node")["Job"]["spec"]["template"]["spec"]["volumes"]}
    assert mounts["/tmp"] == "tmp"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["/etc/quanttrain"] == "job-spec"
    assert volumes["job-spec"]["configMap"]["name"] == JOB.name


def test_container_reports_through_the_termination_message():
    trainer = container(children("single-node")["Job"])
    assert trainer["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert trainer["terminationMessagePath"] == "/dev/termination-log"


def test_environment_names_the_job_and_the_index():
    env = {item["name"]: item for item in container(children("single-node")["Job"])["env"]}
    assert env["QUANTTRAIN_JOB_NAME"]["value"] == JOB.name
    assert env["QUANTTRAIN_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )


def test_gpu_limit_and_scheduling_constraints():
    job = children("gpu")["Job"]["spec"]["template"]["spec"]
    resources = job["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"] == {"cpu": "8", "memory": "32Gi"}
    assert job["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert job["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_gpus_need_gpu_enabled():
    spec, raw = spec_for("single-node")
    spec.resources.gpus_per_node = 2
    job = manifests.build_job(JOB, spec, SETTINGS)
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]


def test_storage_volumes_follow_the_spec():
    job = children("storage")["Job"]
    volumes = {volume["name"]: volume for volume in job["spec"]["template"]["spec"]["volumes"]}
    mounts = {mount["name"]: mount for mount in container(job)["volumeMounts"]}
    assert volumes["datasets"]["persistentVolumeClaim"] == {"claimName": "market-data", "readOnly": True}
    assert mounts["datasets"]["mountPath"] == "/data"
    assert volumes["registry"]["hostPath"]["path"] == "/srv/registry"
    command = container(job)["command"]
    assert command[command.index("--registry") + 1] == "/models"
    assert command[command.index("--data-dir") + 1] == "/data"


def test_operator_settings_supply_default_volumes_image_and_secrets():
    settings = OperatorSettings(
        trainer_image="registry.example/trainer:9", trainer_image_pull_secrets=("pull",),
        datasets_pvc="shared-data", registry_pvc="models", scheduler_name="volcano",
    )
    job = children("single-node", settings)["Job"]
    pod = job["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert container(job)["image"] == "registry.example/trainer:9"
    assert pod["imagePullSecrets"] == [{"name": "pull"}]
    assert pod["schedulerName"] == "volcano"
    assert volumes["datasets"]["persistentVolumeClaim"]["claimName"] == "shared-data"
    assert volumes["registry"]["persistentVolumeClaim"]["claimName"] == "models"
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)


def test_spec_image_overrides_the_default():
    assert container(children("image")["Job"])["image"] == "registry.example/custom:2"
    assert container(children("single-node")["Job"])["image"] == SETTINGS.trainer_image


def test_kueue_queue_label_passes_to_the_job():
    job = manifests.JobIdentity(name=JOB.name, namespace=JOB.namespace, uid=JOB.uid,
                                labels={"kueue.x-k8s.io/queue-name": "gpu-queue", "team": "quant"})
    labels = children("run-policy", job=job)["Job"]["metadata"]["labels"]
    assert labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "team" not in labels


def test_gang_scheduling_adds_a_pod_group():
    settings = OperatorSettings(trainer_image="t:1", gang_scheduling=True, scheduler_name="volcano")
    built = children("distributed", settings)
    assert built["PodGroup"]["spec"] == {"minMember": 2}
    template = built["Job"]["spec"]["template"]
    assert template["metadata"]["annotations"] == {"scheduling.k8s.io/group-name": JOB.name}


def test_mutable_fields_follow_the_run_policy():
    spec, _ = spec_for("run-policy")
    assert manifests.mutable_job_fields(spec, SETTINGS) == {
        "suspend": True, "activeDeadlineSeconds": 7200, "ttlSecondsAfterFinished": 600,
    }


def test_spec_problems_name_the_field_path():
    raw = job_spec(features={**job_spec()["features"], "trainSplitRatio": 0.5, "validationSplitRatio": 0.1})
    spec, problems = manifests.spec_problems("rf", raw)
    assert spec is None
    assert problems[0].startswith("spec.features.trainSplitRatio: train + validation split is 0.6")


def test_spec_problems_report_schema_errors_with_paths():
    raw = job_spec(strategy={**job_spec()["strategy"], "confidenceThreshold": 1.5})
    _, problems = manifests.spec_problems("rf", raw)
    assert len(problems) == 1
    assert problems[0].startswith("spec.strategy.confidenceThreshold: ")


def test_spec_problems_reject_long_names():
    _, problems = manifests.spec_problems("x" * 60, job_spec())
    assert len(problems) == 1
    assert problems[0].startswith("metadata.name 'xxxx")


def test_valid_spec_has_no_problems():
    spec, problems = manifests.spec_problems("rf", job_spec())
    assert problems == []
    assert spec is not None
