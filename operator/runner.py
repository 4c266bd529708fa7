"""Start the kopf operator for ``quanttrain operator``.

The operator runs standalone (no kopf peering): the Helm chart runs one replica
with the Recreate strategy, so two operators never serve the same namespace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import kopf
from kubernetes import config as kubernetes_config
from kubernetes.config import kube_config

from quanttrain.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

# The token that Kubernetes mounts into a pod of a service account; the client library reads it in-cluster.
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class MissingCredentialsError(RuntimeError):
    """Neither in-cluster nor kubeconfig credentials exist when the operator starts."""


def credentials_problem() -> str | None:
    """Return why no Kubernetes credentials can be found, or None when a source of them exists.

    Only the presence and syntax of the sources are checked, where the client
    library looks for them.  Logging in (tokens, exec plugins, the API server)
    is left to the login handler, whose failures kopf retries.
    """
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(SERVICE_ACCOUNT_TOKEN):
        return None
    reason = _kubeconfig_problem(kube_config.KUBE_CONFIG_DEFAULT_LOCATION)
    if reason is None:
        return None
    return (
        f"no Kubernetes credentials found: {reason}, and no in-cluster service account token exists; "
        "set KUBECONFIG to a kubeconfig file or run the operator in a cluster"
    )


def _kubeconfig_problem(location: str) -> str | None:
    """Check the kubeconfig files at ``location`` (KUBECONFIG, or ~/.kube/config when unset)."""
    files = [os.path.expanduser(path) for path in location.split(os.pathsep) if path]
    if not any(os.path.isfile(path) for path in files):
        return f"there is no kubeconfig file at {location!r}" if location else "KUBECONFIG is empty"
    try:
        kubernetes_config.list_kube_config_contexts()  # raises without a current-context
    except (kubernetes_config.ConfigException, OSError) as error:
        return f"the kubeconfig {location!r} is invalid: {error}"
    return None


def run_operator(
    namespaces: Sequence[str] = (),
    *,
    all_namespaces: bool = False,
    liveness_endpoint: str | None = None,
    verbose: bool = False,
    log_json: bool = False,
) -> int:
    """Run until interrupted; return the exit status.

    Raise ValueError for invalid arguments or settings, and
    MissingCredentialsError when there are no Kubernetes credentials.

    ``namespaces`` are exact names or kopf's glob patterns; with
    ``all_namespaces`` the operator serves the whole cluster.
    """
    if not namespaces and not all_namespaces:
        raise ValueError("name at least one namespace, or serve all namespaces")
    OperatorSettings.from_env()  # fail before connecting when a QUANTTRAIN_* variable is invalid
    problem = credentials_problem()
    if problem is not None:
        # kopf would retry the login every minute and never stop, although no source is there to find.
        raise MissingCredentialsError(problem)

    # Importing the module registers its handlers with kopf's default registry.
    from quanttrain.operator import handlers  # noqa: F401

    # The prefix puts "[namespace/name]" on every line about one object.
    kopf.configure(
        verbose=verbose, log_format=kopf.LogFormat.JSON if log_json else kopf.LogFormat.FULL, log_prefix=True,
    )
    scope = "all namespaces" if all_namespaces else ", ".join(namespaces)
    logger.info(f"starting the quanttrain operator for {scope}")
    kopf.run(
        standalone=True,
        clusterwide=all_namespaces,
        namespaces=() if all_namespaces else tuple(namespaces),
        liveness_endpoint=liveness_endpoint,
    )
    return 0
