"""`quanttrain operator`: its options, its default namespace and its settings from the environment."""

from __future__ import annotations

from pathlib import Path

import kubernetes.config.kube_config
import pytest
import yaml

from quanttrain.operator import commands_operator
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
