"""The ``serve`` subcommand: a registered model over HTTP and WebSocket (real-time mode).

aiohttp and the trainer are imported inside :func:`run_serve`, so building the
parser, as every command does, loads no training library.
"""

from __future__ import annotations

import argparse
import logging
import sys

from quanttrain.operator.api import kubernetes_name
from quanttrain.trainer.summary import EXIT_CONFIG_ERROR, EXIT_OK, EXIT_RETRYABLE

REGISTRY_ENV = "QUANTTRAIN_REGISTRY"
DEFAULT_REGISTRY = "registry"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}; use a whole number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}; use a number from 0 to 65535")
    return port


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve", help="serve a registered model over HTTP and WebSocket (needs the trainer extra)",
        description="Serve one registered model version for real-time predictions: GET /healthz, "
                    "GET /v1/model, POST /v1/predict and the WebSocket GET /v1/stream. Features are computed "
                    "by the training code from the bars the client sends. Needs the trainer extra: "
                    "pip install 'quanttrain[trainer]'.")
    serve.add_argument("--registry", default=None, metavar="DIR",
                       help=f"model registry folder (default: ${REGISTRY_ENV}, else ./{DEFAULT_REGISTRY})")
    serve.add_argument("--strategy", required=True, metavar="NAME", help="strategy name or job name")
    chosen = serve.add_mutually_exclusive_group()
    chosen.add_argument("--version", help="version number to serve (default: the latest)")
    chosen.add_argument("--alias", help="alias of the version to serve, for example production")
    serve.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to listen on (default: {DEFAULT_HOST}; 0.0.0.0 listens on every interface)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    serve.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import os

    try:
        from quanttrain.trainer.registry import RegistryError
        from quanttrain.trainer.serve_app import run_server
        from quanttrain.trainer.serving import ServedModel, ServingError
    except ModuleNotFoundError as error:
        if (error.name or "").startswith("quanttrain"):
            raise
        print(f"quanttrain serve: the module {error.name!r} is not installed; serving needs the trainer extra: "
              "pip install 'quanttrain[trainer]'", file=sys.stderr)
        return EXIT_CONFIG_ERROR

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    registry = args.registry or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY
    try:
        model = ServedModel.load(registry, kubernetes_name(args.strategy), args.version, args.alias)
    except (RegistryError, ServingError) as error:
        print(f"quanttrain serve: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if not model.config.strategy.realtime_mode:
        logging.getLogger("quanttrain.serve").warning(
            "Real-time Mode is off for strategy %r; serving it because serve was asked for it "
            "(set Real-time Mode to TRUE on the Strategy sheet to mark it for real-time use)",
            model.config.strategy.name)
    try:
        run_server(model, args.host, args.port)
    except OSError as error:
        print(f"quanttrain serve: cannot listen on {args.host}:{args.port}: {error.strerror or error}; "
              "choose another --port or --host", file=sys.stderr)
        return EXIT_RETRYABLE
    return EXIT_OK
