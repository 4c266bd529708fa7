"""Start the kopf operator for ``quanttrain operator``.

The operator runs standalone (no kopf peering): the Helm chart runs one replica
with the Recreate strategy, so two operators never serve the same namespace.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import kopf

from quanttrain.operator.settings import OperatorSettings

logger = logging.getLogger(__name__)


def run_operator(
    namespaces: Sequence[str] = (),
    *,
    all_namespaces: bool = False,
    liveness_endpoint: str | None = None,
    verbose: bool = False,
    log_json: bool = False,
) -> int:
    """Run until interrupted; return the exit status.

    ``namespaces`` are exact names or kopf's glob patterns; with
    ``all_namespaces`` the operator serves the whole cluster.
    """
    if not namespaces and not all_namespaces:
        raise ValueError("name at least one namespace, or serve all namespaces")
    OperatorSettings.from_env()  # fail before connecting when a QUANTTRAIN_* variable is invalid

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
