"""The Helm chart: lint, render with several values, validate every object, and check the RBAC.

helm and kubectl come from ``make .tools/bin/helm`` (``make test`` fetches them).
Without them these tests fail under CI and are skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "quanttrain"
HELM = ROOT / ".tools" / "bin" / "helm"
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
CRD_NAME = "quanttrain.io_mltrainingjobs.yaml"
RELEASE = "qt"
RELEASE_NAMESPACE = "ml-platform"
# The Kubernetes version the rendered objects are validated against.
KUBERNETES_VERSION = "1.33.0"

# Value sets the chart must render, lint and validate with.
VALUE_CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-namespaces": {"watchAllNamespaces": True},
    "several-namespaces": {"watchNamespaces": ["research", "prod-models"]},
    "scheduler-and-volumes": {
        "operator": {
            "image": {"repository": "registry.example.com/ml/quanttrain-operator", "tag": "0.1.0-rc1"},
            "imagePullSecrets": ["registry-credentials"],
            "livenessPort": 9090,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
                        ]
                    }
                }
            },
            "podAnnotations": {"prometheus.io/scrape": "false"},
            "verbose": True,
            "logJson": True,
        },
        "trainer": {
            "image": {
                "repository": "registry.example.com/ml/quanttrain-trainer",
                "digest": "sha256:" + "ab" * 32,
            },
            "imagePullSecrets": ["registry-credentials"],
            "datasets": {"persistentVolumeClaim": "market-data", "mountPath": "/data", "readOnly": True},
            "registry": {"persistentVolumeClaim": "model-registry", "mountPath": "/registry", "readOnly": False},
            "schedulerName": "volcano",
            "gangScheduling": True,
        },
        "serviceAccount": {"name": "quanttrain-operator", "annotations": {"example.com/owner": "ml-platform"}},
        "argocd": {"healthCheck": True},
    },
}

# What the operator may do in a watched namespace, as (API group, resource, verb).
OPERATOR_PERMISSIONS = {
    *{("quanttrain.io", "mltrainingjobs", verb) for verb in ("get", "list", "watch", "patch", "update")},
    *{("quanttrain.io", "mltrainingjobs/status", verb) for verb in ("get", "patch", "update")},
    *{("batch", "jobs", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")},
    *{("", "services", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")},
    *{("", "configmaps", verb) for verb in ("get", "list", "watch", "create", "patch", "delete")},
    *{("", "events", verb) for verb in ("create", "patch")},
    *{("events.k8s.io", "events", verb) for verb in ("create", "patch")},
    *{("", "pods", verb) for verb in ("get", "list", "watch", "patch", "delete")},
}
# What gang scheduling adds: the operator creates one Volcano PodGroup per distributed job.
POD_GROUP_PERMISSIONS = {("scheduling.volcano.sh", "podgroups", verb) for verb in ("get", "create", "delete")}
CRD_READ_PERMISSIONS = {
    ("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("get", "list", "watch")
}


# -- helpers ----------------------------------------------------------------


def require_tool(path: Path) -> Path:
    """Return the tool's path, or fail (under CI) or skip (elsewhere) when it is missing."""
    if os.access(path, os.X_OK):
        return path
    message = f"{path.relative_to(ROOT)} is missing; run `make {path.relative_to(ROOT)}` to fetch it"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def helm() -> Path:
    return require_tool(HELM)


def run_helm(helm: Path, *args: str, values: dict[str, Any] | None = None, tmp_path: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(helm), *args]
    if values:
        assert tmp_path is not None
        values_file = tmp_path / "values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        command += ["--values", str(values_file)]
    environment = {**os.environ, "HELM_CACHE_HOME": "/tmp/quanttrain-helm-cache", "HELM_CONFIG_HOME": "/tmp/quanttrain-helm-config"}
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)


def render(helm: Path, values: dict[str, Any], tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        "--kube-version", KUBERNETES_VERSION, *extra, values=values, tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every value case rendered once, keyed by case name."""
    return {
        name: render(helm, values, tmp_path_factory.mktemp(name))
        for name, values in VALUE_CASES.items()
    }


def objects_of(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = objects_of(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def permissions(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# -- lint and validation ----------------------------------------------------


@pytest.mark.parametrize("case", VALUE_CASES)
def test_chart_lints_cleanly(helm: Path, tmp_path: Path, case: str) -> None:
    result = run_helm(
        helm, "lint", "--strict", str(CHART), "--namespace", RELEASE_NAMESPACE,
        values=VALUE_CASES[case], tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", VALUE_CASES)
def test_rendered_objects_validate_strictly(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for doc in rendered[case]:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{case}: {name} is invalid at {'.'.join(map(str, error.path))}: {error.message}")


@pytest.mark.parametrize("case", VALUE_CASES)
def test_namespaced_objects_go_to_their_namespace(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding"}
    for doc in rendered[case]:
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
        else:
            assert doc["metadata"].get("namespace"), f"{doc['kind']}/{doc['metadata']['name']} has no namespace"


def test_chart_ships_the_generated_crd() -> None:
    generated = ROOT / "crds" / CRD_NAME
    if not generated.exists():
        pytest.skip(f"crds/{CRD_NAME} is not generated yet")
    shipped = CHART / "crds" / CRD_NAME
    assert shipped.exists(), f"{shipped.relative_to(ROOT)} is missing; run `python -m quanttrain.operator.crd --write`"
    assert shipped.read_text() == generated.read_text(), "the chart's CRD differs from crds/; regenerate both"


def test_shipped_crd_validates_strictly() -> None:
    shipped = CHART / "crds" / CRD_NAME
    if not shipped.exists():
        pytest.skip(f"helm/quanttrain/crds/{CRD_NAME} is not generated yet")
    crd = yaml.safe_load(shipped.read_text())
    kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)
    assert crd["metadata"]["name"] == "mltrainingjobs.quanttrain.io"


def test_install_includes_the_crd(helm: Path, tmp_path: Path) -> None:
    if not (CHART / "crds" / CRD_NAME).exists():
        pytest.skip(f"helm/quanttrain/crds/{CRD_NAME} is not generated yet")
    docs = render(helm, {}, tmp_path, "--include-crds")
    crds = objects_of(docs, "CustomResourceDefinition")
    assert [crd["metadata"]["name"] for crd in crds] == ["mltrainingjobs.quanttrain.io"]


@pytest.mark.parametrize("case", VALUE_CASES)
def test_every_object_carries_the_release_labels(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for doc in rendered[case]:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, doc["metadata"]["name"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", doc["metadata"]["name"]


# -- RBAC -------------------------------------------------------------------


@pytest.mark.parametrize("case", VALUE_CASES)
def test_rbac_has_no_wildcards(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for role in objects_of(rendered[case], "Role") + objects_of(rendered[case], "ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: wildcard in {field}"
                assert not any("*" in item for item in rule.get(field, [])), f"{role['metadata']['name']}: {field}"
            assert "nonResourceURLs" not in rule, role["metadata"]["name"]


@pytest.mark.parametrize("case", VALUE_CASES)
def test_rbac_never_grants_secrets(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    for role in objects_of(rendered[case], "Role") + objects_of(rendered[case], "ClusterRole"):
        resources = {resource for _, resource, _ in permissions(role)}
        assert "secrets" not in resources, role["metadata"]["name"]


def test_role_grants_exactly_the_operator_permissions(rendered: dict[str, list[dict[str, Any]]]) -> None:
    role = only(rendered["defaults"], "Role")
    assert permissions(role) == OPERATOR_PERMISSIONS


def test_gang_scheduling_adds_pod_group_permissions(rendered: dict[str, list[dict[str, Any]]]) -> None:
    role = only(rendered["scheduler-and-volumes"], "Role")
    assert permissions(role) == OPERATOR_PERMISSIONS | POD_GROUP_PERMISSIONS


def test_role_and_binding_are_in_the_release_namespace_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    assert only(docs, "Role")["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert only(docs, "RoleBinding")["metadata"]["namespace"] == RELEASE_NAMESPACE


def test_each_watched_namespace_gets_a_role_and_binding(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["several-namespaces"]
    roles = {doc["metadata"]["namespace"]: doc for doc in objects_of(docs, "Role")}
    bindings = {doc["metadata"]["namespace"]: doc for doc in objects_of(docs, "RoleBinding")}
    assert set(roles) == {"research", "prod-models"}
    assert set(bindings) == {"research", "prod-models"}
    for namespace, binding in bindings.items():
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roles[namespace]["metadata"]["name"],
        }
        assert permissions(roles[namespace]) == OPERATOR_PERMISSIONS


def test_role_bindings_name_the_operator_service_account(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["several-namespaces"]
    account = only(docs, "ServiceAccount")["metadata"]
    for binding in objects_of(docs, "RoleBinding") + objects_of(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": RELEASE_NAMESPACE}
        ]


def test_watching_all_namespaces_uses_a_cluster_role(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["all-namespaces"]
    assert objects_of(docs, "Role") == []
    assert objects_of(docs, "RoleBinding") == []
    cluster_roles = {doc["metadata"]["name"]: doc for doc in objects_of(docs, "ClusterRole")}
    operator_role = cluster_roles.pop(f"{RELEASE}-quanttrain")
    assert permissions(operator_role) == OPERATOR_PERMISSIONS
    bound = {doc["roleRef"]["name"] for doc in objects_of(docs, "ClusterRoleBinding")}
    assert f"{RELEASE}-quanttrain" in bound


@pytest.mark.parametrize("case", VALUE_CASES)
def test_crd_reader_cluster_role_only_reads_crds(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    reader = next(
        doc for doc in objects_of(rendered[case], "ClusterRole") if doc["metadata"]["name"].endswith("-crd-reader")
    )
    assert permissions(reader) == CRD_READ_PERMISSIONS


def test_rbac_lets_the_operator_resume_suspended_jobs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    # The operator creates the Job suspended while runPolicy.suspend is true and
    # patches the Job's spec.suspend when that field flips.
    granted = permissions(only(rendered["defaults"], "Role"))
    assert ("batch", "jobs", "patch") in granted
    assert ("batch", "jobs", "create") in granted


def test_rbac_is_omitted_when_disabled(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, {"rbac": {"create": False}}, tmp_path)
    kinds = {doc["kind"] for doc in docs}
    assert kinds.isdisjoint({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})


# -- the operator Deployment ---------------------------------------------------


def test_operator_runs_one_replica_recreated_on_upgrade(rendered: dict[str, list[dict[str, Any]]]) -> None:
    spec = only(rendered["defaults"], "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_operator_watches_the_release_namespace_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    container = operator_container(rendered["defaults"])
    assert container["command"] == ["quanttrain", "operator"]
    assert f"--namespace={RELEASE_NAMESPACE}" in container["args"]
    assert "--all-namespaces" not in container["args"]


def test_operator_gets_one_namespace_flag_per_watched_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    args = operator_container(rendered["several-namespaces"])["args"]
    assert [arg for arg in args if arg.startswith("--namespace")] == ["--namespace=research", "--namespace=prod-models"]


def test_operator_watches_all_namespaces_when_asked(rendered: dict[str, list[dict[str, Any]]]) -> None:
    args = operator_container(rendered["all-namespaces"])["args"]
    assert "--all-namespaces" in args
    assert not any(arg.startswith("--namespace") for arg in args)


@pytest.mark.parametrize("case", ["defaults", "scheduler-and-volumes"])
def test_liveness_probe_matches_the_operator_endpoint(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    container = operator_container(rendered[case])
    port = VALUE_CASES[case].get("operator", {}).get("livenessPort", 8080)
    assert f"--liveness=http://0.0.0.0:{port}/healthz" in container["args"]
    assert container["ports"] == [{"name": "health", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_operator_cli_accepts_the_chart_arguments(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from quanttrain.operator.cli import build_parser

    for case in ("defaults", "several-namespaces", "all-namespaces", "scheduler-and-volumes"):
        container = operator_container(rendered[case])
        assert container["command"][0] == "quanttrain"
        try:
            arguments = build_parser().parse_args([*container["command"][1:], *container["args"]])
        except SystemExit:
            pytest.fail(f"`quanttrain` rejects the chart's arguments {container['args']} ({case})")
        assert arguments.command == "operator"


def test_logging_values_become_operator_flags(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert {"--verbose", "--log-json"} <= set(operator_container(rendered["scheduler-and-volumes"])["args"])
    assert {"--verbose", "--log-json"}.isdisjoint(operator_container(rendered["defaults"])["args"])


def test_operator_pod_meets_the_restricted_security_standard(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = only(rendered["defaults"], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}


def test_operator_has_resources_and_a_writable_tmp(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = only(rendered["defaults"], "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert pod["volumes"][0]["name"] == "tmp"
    assert "emptyDir" in pod["volumes"][0]


def test_operator_image_defaults_to_the_app_version(rendered: dict[str, list[dict[str, Any]]]) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    container = operator_container(rendered["defaults"])
    assert container["image"] == f"quanttrain-operator:{chart['appVersion']}"
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_trainer_defaults_reach_the_operator_as_environment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    environment = env_of(operator_container(rendered["scheduler-and-volumes"]))
    assert environment["QUANTTRAIN_TRAINER_IMAGE"] == "registry.example.com/ml/quanttrain-trainer@sha256:" + "ab" * 32
    assert environment["QUANTTRAIN_TRAINER_IMAGE_PULL_SECRETS"] == "registry-credentials"
    assert environment["QUANTTRAIN_DATASETS_PVC"] == "market-data"
    assert environment["QUANTTRAIN_DATASETS_MOUNT_PATH"] == "/data"
    assert environment["QUANTTRAIN_DATASETS_READ_ONLY"] == "true"
    assert environment["QUANTTRAIN_REGISTRY_PVC"] == "model-registry"
    assert environment["QUANTTRAIN_REGISTRY_MOUNT_PATH"] == "/registry"
    assert environment["QUANTTRAIN_REGISTRY_READ_ONLY"] == "false"
    assert environment["QUANTTRAIN_SCHEDULER_NAME"] == "volcano"
    assert environment["QUANTTRAIN_GANG_SCHEDULING"] == "true"


def test_unset_trainer_volumes_pass_no_environment(rendered: dict[str, list[dict[str, Any]]]) -> None:
    environment = env_of(operator_container(rendered["defaults"]))
    assert environment["QUANTTRAIN_TRAINER_IMAGE"] == "quanttrain-trainer:0.1.0"
    assert not any(key.startswith(("QUANTTRAIN_DATASETS_", "QUANTTRAIN_REGISTRY_")) for key in environment)
    assert "QUANTTRAIN_SCHEDULER_NAME" not in environment


def test_pod_placement_values_pass_through(rendered: dict[str, list[dict[str, Any]]]) -> None:
    values = VALUE_CASES["scheduler-and-volumes"]["operator"]
    template = only(rendered["scheduler-and-volumes"], "Deployment")["spec"]["template"]
    assert template["spec"]["nodeSelector"] == values["nodeSelector"]
    assert template["spec"]["tolerations"] == values["tolerations"]
    assert template["spec"]["affinity"] == values["affinity"]
    assert template["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert template["metadata"]["annotations"] == values["podAnnotations"]
    assert template["spec"]["serviceAccountName"] == "quanttrain-operator"


# -- invalid values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"watchNamespaces": ["Research_Team"]}, "/watchNamespaces/0"),
        ({"operator": {"livenesPort": 9090}}, "livenesPort"),
        ({"operator": {"livenessPort": 80}}, "/operator/livenessPort"),
        ({"trainer": {"image": {"repository": "r", "digest": "latest"}}}, "/trainer/image/digest"),
        ({"watchAllNamespaces": True, "watchNamespaces": ["research"]}, "watchNamespaces and watchAllNamespaces"),
        ({"trainer": {"gangScheduling": True}}, "trainer.schedulerName"),
    ],
    ids=["namespace-name", "misspelt-key", "privileged-port", "digest", "both-scopes", "gang-without-scheduler"],
)
def test_invalid_values_are_rejected_with_the_field(helm: Path, tmp_path: Path, values: dict[str, Any], expected: str) -> None:
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, values=values, tmp_path=tmp_path,
    )
    assert result.returncode != 0
    assert expected in result.stderr


# -- Argo CD --------------------------------------------------------------------


def test_argocd_health_config_map_is_optional(rendered: dict[str, list[dict[str, Any]]]) -> None:
    assert objects_of(rendered["defaults"], "ConfigMap") == []
    assert len(objects_of(rendered["scheduler-and-volumes"], "ConfigMap")) == 1


def test_argocd_health_config_map_ships_the_lua_file(rendered: dict[str, list[dict[str, Any]]]) -> None:
    data = only(rendered["scheduler-and-volumes"], "ConfigMap")["data"]
    lua = (CHART / "files" / "argocd-health.lua").read_text()
    assert data["resource.customizations.health.quanttrain.io_MLTrainingJob"] == lua
    patch = yaml.safe_load(data["argocd-cm-patch.yaml"])
    assert patch == {"data": {"resource.customizations.health.quanttrain.io_MLTrainingJob": lua}}


def test_notes_command_merges_the_health_check_into_argocd_cm(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    kubectl = require_tool(KUBECTL)
    config_map = tmp_path / "health.yaml"
    config_map.write_text(yaml.safe_dump(only(rendered["scheduler-and-volumes"], "ConfigMap")))
    argocd_cm = tmp_path / "argocd-cm.yaml"
    argocd_cm.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "argocd-cm", "namespace": "argocd"},
        "data": {"url": "https://argocd.example.com"},
    }))

    # The same jsonpath and merge patch as NOTES.txt, run offline with --local.
    extract = subprocess.run(
        [str(kubectl), "patch", "--local", "-f", str(config_map), "--type", "merge", "-p", "{}",
         "-o", r"jsonpath={.data.argocd-cm-patch\.yaml}"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    merged = subprocess.run(
        [str(kubectl), "patch", "--local", "-f", str(argocd_cm), "--type", "merge", "--patch", extract.stdout,
         "-o", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )

    data = json.loads(merged.stdout)["data"]
    lua = (CHART / "files" / "argocd-health.lua").read_text()
    assert data["url"] == "https://argocd.example.com"
    assert data["resource.customizations.health.quanttrain.io_MLTrainingJob"].strip() == lua.strip()
