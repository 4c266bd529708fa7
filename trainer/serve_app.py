"""The HTTP and WebSocket server of ``quanttrain serve``, on aiohttp.

Routes:

``GET /healthz``
    ``{"status": "ok"}`` once the model is loaded (it is loaded before the
    server listens).
``GET /v1/model``
    Strategy, version, sha256, classes, features, confidence threshold,
    warm-up and the metrics measured at training time.
``POST /v1/predict``
    ``{"bars": [...]}``: a history of bars in time order.  Stateless: each
    request is predicted on its own bars.  So it must contain at least the
    model's ``warmupBars`` bars, and every bar from then on gets a prediction.
``GET /v1/stream``
    WebSocket.  The client sends one bar per text message and receives one
    message per bar: a prediction, a ``pending`` note while the connection's
    buffer warms up, or an error.  Each connection has its own buffer.

Invalid input gets status 400 (or an ``error`` message on the WebSocket,
which stays open) that lists every bad field with its value and the fix.
Nothing of an invalid request is applied.  Errors are logged with their reason, never
with the request body.  Prediction runs in a worker thread, so a long
request does not stall the other connections.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from quanttrain.trainer.serving import (
    BarError,
    BarProblem,
    Prediction,
    Predictor,
    ServedModel,
    check_interval,
    parse_bar,
    parse_bars,
    predict_history,
)

logger = logging.getLogger(__name__)

MODEL_KEY = web.AppKey("model", ServedModel)

# A request body of 32 MiB has room for about 200,000 bars with ISO 8601 timestamps
# (about 170 bytes each).  Parsing and predicting 250,000 bars with the demo's
# 200-tree forest took 8.6 s on 2 shared AMD EPYC cores.
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_REQUEST_BARS = 200_000
# One bar is about 150 bytes of JSON; anything far larger is not a bar.
MAX_MESSAGE_BYTES = 64 * 1024
# Problems written to the log per rejected request; the response lists them all.
LOGGED_PROBLEMS = 3


def create_app(model: ServedModel) -> web.Application:
    """Build the application that serves ``model``."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[MODEL_KEY] = model
    app.add_routes([
        web.get("/healthz", healthz),
        web.get("/v1/model", describe_model),
        web.post("/v1/predict", predict),
        web.get("/v1/stream", stream),
    ])
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def describe_model(request: web.Request) -> web.Response:
    return web.json_response(request.app[MODEL_KEY].describe())


async def predict(request: web.Request) -> web.Response:
    model = request.app[MODEL_KEY]
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        logger.warning("POST /v1/predict from %s rejected: body larger than %d bytes", request.remote, MAX_BODY_BYTES)
        return web.json_response({"error": f"request body larger than {MAX_BODY_BYTES} bytes; send at most "
                                           f"{MAX_REQUEST_BARS} bars per request"}, status=413)
    try:
        # Parsing a large body takes seconds too, so it runs in the worker thread with the prediction.
        bars, predictions, skipped = await asyncio.to_thread(_predict_body, model, body)
    except BarError as error:
        _log_rejected(request, error)
        return _error_response(error)
    except Exception:  # noqa: BLE001 - answer with 500 and keep serving
        logger.exception("POST /v1/predict from %s failed while predicting", request.remote)
        return web.json_response({"error": "prediction failed; see the server log"}, status=500)
    return web.json_response({
        "strategy": model.strategy, "version": model.version, "receivedBars": len(bars),
        "warmupBars": model.warmup_bars, "predictions": [item.to_json() for item in predictions],
        "skipped": [item.to_json() for item in skipped],
    })


def _predict_body(model: ServedModel, body: bytes):
    bars = parse_bars(_bars_field(_decode(body, "request body")))
    _check_length(len(bars), model)
    check_interval([bar.timestamp for bar in bars], model.interval_minutes, "bars")
    predictions, skipped = predict_history(model, bars)
    return bars, predictions, skipped


async def stream(request: web.Request) -> web.WebSocketResponse:
    model = request.app[MODEL_KEY]
    socket = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_MESSAGE_BYTES)
    await socket.prepare(request)
    predictor = Predictor(model)
    logger.info("stream from %s opened", request.remote)
    async for message in socket:
        if message.type is WSMsgType.TEXT:
            await socket.send_json(await _stream_reply(request, predictor, message.data))
        elif message.type is WSMsgType.BINARY:
            error = BarError([BarProblem("message", f"<{len(message.data)} bytes>",
                                         "must be a text message containing one bar as a JSON object")])
            _log_rejected(request, error)
            await socket.send_json(_error_message(error))
        elif message.type is WSMsgType.ERROR:
            logger.warning("stream from %s closed with an error: %s", request.remote, socket.exception())
    logger.info("stream from %s closed after %d bars", request.remote, predictor.received)
    return socket


async def _stream_reply(request: web.Request, predictor: Predictor, text: str) -> dict[str, Any]:
    try:
        bar = parse_bar(_decode(text, "message"))
        result = await asyncio.to_thread(predictor.update, bar)
    except BarError as error:
        _log_rejected(request, error)
        return _error_message(error)
    except Exception:  # noqa: BLE001 - report the bar and keep the stream open
        logger.exception("stream from %s failed while predicting a bar", request.remote)
        return {"type": "error", "error": "prediction failed; see the server log", "errors": []}
    kind = "prediction" if isinstance(result, Prediction) else "pending"
    return {"type": kind, **result.to_json()}


def _decode(text: str | bytes, field: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BarError([BarProblem(field, f"<{len(text)} characters>",
                                   f"is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); "
                                   "send a JSON object")]) from None
    except UnicodeDecodeError as error:
        raise BarError([BarProblem(field, f"<{len(text)} bytes>",
                                   f"is not UTF-8 text ({error.reason} at byte {error.start}); send UTF-8 JSON")]) from None


def _bars_field(body: Any) -> Any:
    if not isinstance(body, dict) or "bars" not in body:
        raise BarError([BarProblem("bars", None, 'missing; send {"bars": [{"timestamp": ..., "open": ..., '
                                                 '"high": ..., "low": ..., "close": ..., "volume": ...}, ...]}')])
    unknown = sorted(str(key) for key in body if key != "bars")
    if unknown:
        raise BarError([BarProblem(unknown[0], body[unknown[0]],
                                   f"unknown field(s) {', '.join(unknown)}; the request body has only 'bars'")])
    return body["bars"]


def _check_length(count: int, model: ServedModel) -> None:
    if count > MAX_REQUEST_BARS:
        raise BarError([BarProblem("bars", f"<{count} bars>",
                                   f"too many bars; send at most {MAX_REQUEST_BARS} per request")])
    if count < model.warmup_bars:
        raise BarError([BarProblem("bars", f"<{count} bars>",
                                   f"too few bars for the indicators' warm-up: this model needs at least "
                                   f"{model.warmup_bars} bars in time order ending with the bar to predict "
                                   "(GET /v1/model shows warmupBars), or use /v1/stream, which keeps the "
                                   "history between bars")])


def _error_response(error: BarError) -> web.Response:
    return web.json_response({"error": "invalid request", "errors": [item.to_json() for item in error.problems]},
                             status=400)


def _error_message(error: BarError) -> dict[str, Any]:
    return {"type": "error", "error": "invalid bar; it was not added to the stream",
            "errors": [item.to_json() for item in error.problems]}


def _log_rejected(request: web.Request, error: BarError) -> None:
    listed = "; ".join(str(problem) for problem in error.problems[:LOGGED_PROBLEMS])
    more = f" and {len(error.problems) - LOGGED_PROBLEMS} more" if len(error.problems) > LOGGED_PROBLEMS else ""
    logger.warning("%s %s from %s rejected: %s%s", request.method, request.path, request.remote, listed, more)


def run_server(model: ServedModel, host: str, port: int) -> None:
    """Serve ``model`` until interrupted (Ctrl-C or SIGTERM)."""

    def announce(_: str) -> None:
        # aiohttp calls this once the socket is bound, so the line appears only when serving works.
        logger.info("serving %s version %s on http://%s:%d (warm-up %d bars)", model.strategy, model.version,
                    host, port, model.warmup_bars)

    web.run_app(create_app(model), host=host, port=port, print=announce, access_log=logger)
