"""The ``quanttrain operator`` subcommand."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "operator",
        help="run the MLTrainingJob operator with the current kubeconfig or in-cluster credentials",
        description="Run the kopf operator that turns MLTrainingJobs into Indexed Jobs and writes their status. "
        "Settings come from QUANTTRAIN_* environment variables (see docs/operator.md).",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", dest="namespaces", action="append", default=[], metavar="NS",
        help="serve MLTrainingJobs in this namespace; repeat for more. Glob patterns such as 'team-*' "
        "need QUANTTRAIN_NAMESPACE_SCANNING=true. Default: the namespace of the current kubeconfig context, or the pod's namespace in a cluster",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="serve MLTrainingJobs in every namespace",
    )
    parser.add_argument(
        "--liveness", metavar="URL", default=None,
        help="serve a liveness probe at this URL, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    namespaces = args.namespaces or ([] if args.all_namespaces else [default_namespace()])
    from quanttrain.operator.runner import MissingCredentialsError, run_operator

    try:
        return run_operator(
            namespaces, all_namespaces=args.all_namespaces, liveness_endpoint=args.liveness,
            verbose=args.verbose, log_json=args.log_json,
        )
    except ValueError as error:
        print(f"quanttrain operator: {error}", file=sys.stderr)
        return 2
    except MissingCredentialsError as error:
        print(f"quanttrain operator: {error}", file=sys.stderr)
        return 1


# File with the namespace of the pod that reads it.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_namespace() -> str:
    """Return the pod's own namespace in a cluster, else the current kubeconfig context's, else ``default``."""
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as file:
            return file.read().strip() or "default"
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts()
    except (config.ConfigException, OSError):
        return "default"  # no usable kubeconfig: kopf's login reports the problem itself
    return (context or {}).get("context", {}).get("namespace") or "default"
