"""`quanttrain operator`: its options, its default namespace and its settings from the environment."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import kopf
import kubernetes.config.kube_config
import pytest
import yaml

from quanttrain.operator import commands_operator, runner
from quanttrain.operator.cli import build_parser, main
from quanttrain.operator.settings import OperatorSettings


def test_namespace_and_all_namespaces_exclude_each_other(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["operator", "--namespace=a", "--all-namespaces"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_namespace_repeats():
    args = build_parser().parse_args(["operator", "-n", "a", "--namespace=b", "--liveness=http://0.0.0.0:8080/healthz"])
    assert args.namespaces == ["a", "b"]
    assert args.liveness == "http://0.0.0.0:8080/healthz"


def test_default_namespace_comes_from_the_kubeconfig_context(tmp_path: Path, monkeypatch):
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me", "namespace": "research"}}],
    }))
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    assert commands_operator.default_namespace() == "research"


def test_default_namespace_without_kubeconfig_is_default(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing"))
    assert commands_operator.default_namespace() == "default"


def test_settings_read_the_environment():
    settings = OperatorSettings.from_env({
        "QUANTTRAIN_TRAINER_IMAGE": "registry.example/trainer:2",
        "QUANTTRAIN_TRAINER_IMAGE_PULL_SECRETS": "one, two",
        "QUANTTRAIN_DATASETS_READ_ONLY": "false",
        "QUANTTRAIN_SCHEDULER_NAME": "",
        "QUANTTRAIN_API_RETRY_LIMIT": "4",
    })
    assert settings.trainer_image == "registry.example/trainer:2"
    assert settings.trainer_image_pull_secrets == ("one", "two")
    assert settings.datasets_read_only is False
    assert settings.scheduler_name is None
    assert settings.api_retry_limit == 4


def test_settings_errors_name_every_variable():
    with pytest.raises(ValueError) as raised:
        OperatorSettings.from_env({"QUANTTRAIN_RENDEZVOUS_PORT": "70000", "QUANTTRAIN_API_RETRY_LIMIT": "many"})
    message = str(raised.value)
    assert "QUANTTRAIN_RENDEZVOUS_PORT='70000'" in message
    assert "QUANTTRAIN_API_RETRY_LIMIT='many'" in message


def test_invalid_settings_stop_the_command(monkeypatch, capsys):
    monkeypatch.setenv("QUANTTRAIN_RESYNC_SECONDS", "-1")
    assert main(["operator", "--namespace=research"]) == 2
    assert "QUANTTRAIN_RESYNC_SECONDS='-1'" in capsys.readouterr().err


def test_backoff_doubles_up_to_the_maximum():
    settings = OperatorSettings(api_backoff_seconds=1, api_max_backoff_seconds=5)
    assert [settings.backoff(retry) for retry in range(5)] == [1, 2, 4, 5, 5]


def write_kubeconfig(path: Path, current_context: str | None = "lab") -> None:
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "me"}}],
    }
    if current_context:
        config["current-context"] = current_context
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def outside_cluster(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_operator_without_credentials_exits_with_one_line(tmp_path: Path):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KUBERNETES_")}
    environment |= {"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}

    finished = subprocess.run(
        [sys.executable, "-m", "quanttrain.operator.cli", "operator", "--namespace=research"],
        env=environment, capture_output=True, text=True, timeout=60,
    )

    assert finished.returncode == 1
    assert finished.stderr.startswith("quanttrain operator: no Kubernetes credentials found: ")
    assert str(tmp_path / "missing") in finished.stderr
    assert len(finished.stderr.splitlines()) == 1


def test_valid_kubeconfig_is_a_credentials_source(tmp_path: Path, monkeypatch, outside_cluster):
    write_kubeconfig(tmp_path / "config")
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "config"))

    assert runner.credentials_problem() is None


def test_kubeconfig_without_current_context_is_invalid(tmp_path: Path, monkeypatch, outside_cluster):
    write_kubeconfig(tmp_path / "config", current_context=None)
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "config"))

    problem = runner.credentials_problem()

    assert f"the kubeconfig '{tmp_path / 'config'}' is invalid: " in problem
    assert "current-context" in problem


def test_login_without_credentials_is_retried(tmp_path: Path, monkeypatch, outside_cluster):
    from quanttrain.operator import handlers

    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "missing"))

    with pytest.raises(kopf.TemporaryError) as raised:
        asyncio.run(handlers.login(logger=logging.getLogger("test"), settings=kopf.OperatorSettings()))
    assert str(raised.value).startswith("no Kubernetes credentials found: ")
