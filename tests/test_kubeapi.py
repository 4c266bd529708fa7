"""The operator's small API client: paths, error classes and TLS settings."""

from __future__ import annotations

import ssl

import kopf
import pytest

from quanttrain.operator.kubeapi import ApiError, _ssl_context, object_path, resource_path


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (("v1", "pods", "ns", "p"), "/api/v1/namespaces/ns/pods/p"),
        (("batch/v1", "jobs", "ns"), "/apis/batch/v1/namespaces/ns/jobs"),
        (("quanttrain.io/v1alpha1", "mltrainingjobs", "ns", "rf", "status"),
         "/apis/quanttrain.io/v1alpha1/namespaces/ns/mltrainingjobs/rf/status"),
    ],
)
def test_resource_path(args, path):
    assert resource_path(*args) == path


def test_object_path_of_a_collection():
    document = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "rf", "namespace": "ns"}}
    assert object_path(document, collection=True) == "/api/v1/namespaces/ns/configmaps"
    assert object_path(document) == "/api/v1/namespaces/ns/configmaps/rf"


@pytest.mark.parametrize(("status", "temporary"), [(429, True), (500, True), (503, True), (None, True),
                                                  (403, False), (404, False), (409, False), (422, False)])
def test_api_error_temporary(status, temporary):
    assert ApiError("POST", "/x", status, "m").temporary is temporary


def test_api_error_message_names_the_request():
    assert str(ApiError("POST", "/api/v1/pods", 503, "busy")) == "POST /api/v1/pods failed with HTTP 503: busy"
    assert str(ApiError("GET", "/x", None, "timed out")) == "GET /x failed with no response: timed out"


def test_plain_http_uses_no_tls():
    assert _ssl_context(kopf.ConnectionInfo(server="http://127.0.0.1:8001")) is True


def test_insecure_https_skips_verification():
    context = _ssl_context(kopf.ConnectionInfo(server="https://10.0.0.1:6443", insecure=True))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False
