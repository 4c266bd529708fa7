"""The serving application on 127.0.0.1: HTTP, WebSocket and the serve command, with a real model."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from serving_fixtures import STRATEGY_KEY, bar_payloads

from quanttrain.operator.cli import main
from quanttrain.trainer.data import load_bars
from quanttrain.trainer.serve_app import create_app
from quanttrain.trainer.serving import ServedModel, parse_bars, predict_history

STREAM_START = 4000
EXTRA_BARS = 5


@pytest.fixture(scope="module")
def data_dir(market_data_dir):
    return market_data_dir


@pytest.fixture(scope="module")
def registry(serving_registry):
    return serving_registry


@pytest.fixture(scope="module")
def model(registry):
    return ServedModel.load(registry, STRATEGY_KEY)


@pytest.fixture(scope="module")
def history(model, data_dir):
    """The bars of one request: the warm-up plus EXTRA_BARS bars to predict."""
    bars = load_bars(data_dir / "sp500_daily.csv")
    return bar_payloads(bars.iloc[STREAM_START:STREAM_START + model.warmup_bars + EXTRA_BARS])


@pytest_asyncio.fixture
async def client(model):
    async with TestClient(TestServer(create_app(model), host="127.0.0.1")) as test_client:
        yield test_client


def problem_fields(body: dict) -> list[str]:
    return [problem["field"] for problem in body["errors"]]


# -- HTTP -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_healthz_is_ok(client):
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


@pytest.mark.asyncio
async def test_model_endpoint_describes_the_version(client, registry):
    metadata = json.loads((registry / STRATEGY_KEY / "1" / "metadata.json").read_text())
    body = await (await client.get("/v1/model")).json()
    assert body["strategy"] == STRATEGY_KEY
    assert body["version"] == "1"
    assert body["sha256"] == metadata["modelSha256"]
    assert body["classes"] == [0, 1]
    assert body["features"] == metadata["features"]
    assert body["confidenceThreshold"] == 0.52
    assert body["metrics"]["f1Score"] == metadata["metrics"]["f1Score"]


@pytest.mark.asyncio
async def test_predict_returns_one_prediction_per_warm_bar(client, model, history):
    response = await client.post("/v1/predict", json={"bars": history})
    assert response.status == 200
    body = await response.json()
    assert [item["timestamp"] for item in body["predictions"]] == [bar["timestamp"] for bar in history[-EXTRA_BARS - 1:]]
    assert body["warmupBars"] == model.warmup_bars
    assert body["receivedBars"] == len(history)


@pytest.mark.asyncio
async def test_predict_matches_the_predictor(client, model, history):
    body = await (await client.post("/v1/predict", json={"bars": history})).json()
    expected, _ = predict_history(model, parse_bars(history))
    assert body["predictions"] == [item.to_json() for item in expected]


@pytest.mark.asyncio
async def test_prediction_fields_name_label_threshold_and_version(client, history):
    body = await (await client.post("/v1/predict", json={"bars": history})).json()
    prediction = body["predictions"][-1]
    assert prediction["label"] in (0, 1)
    assert set(prediction["probabilities"]) == {"0", "1"}
    assert prediction["thresholdReached"] == (prediction["confidence"] >= 0.52)
    assert prediction["modelVersion"] == "1"


@pytest.mark.asyncio
async def test_predict_rejects_too_few_bars(client, model, history):
    response = await client.post("/v1/predict", json={"bars": history[:10]})
    assert response.status == 400
    body = await response.json()
    assert problem_fields(body) == ["bars"]
    assert f"at least {model.warmup_bars} bars" in body["errors"][0]["message"]


@pytest.mark.asyncio
async def test_predict_rejects_an_older_bar(client, history):
    bars = list(history)
    bars[5], bars[6] = bars[6], bars[5]
    response = await client.post("/v1/predict", json={"bars": bars})
    assert response.status == 400
    body = await response.json()
    assert problem_fields(body) == ["bars[6].timestamp"]
    assert body["errors"][0]["value"] == history[5]["timestamp"]


@pytest.mark.asyncio
async def test_predict_lists_every_bad_field(client, history):
    bars = [dict(bar) for bar in history]
    del bars[3]["volume"]
    bars[7]["close"] = "n/a"
    body = await (await client.post("/v1/predict", json={"bars": bars})).json()
    assert problem_fields(body) == ["bars[3]", "bars[7].close"]
    assert "missing field(s) volume" in body["errors"][0]["message"]
    assert body["errors"][1]["value"] == "n/a"


@pytest.mark.asyncio
async def test_predict_rejects_hourly_bars_for_a_daily_model(client, history):
    bars = [{**bar, "timestamp": f"2018-01-{2 + position // 24:02d}T{position % 24:02d}:00:00"}
            for position, bar in enumerate(history[:24 * 20])]
    response = await client.post("/v1/predict", json={"bars": bars})
    assert response.status == 400
    body = await response.json()
    assert problem_fields(body) == ["bars"]
    assert body["errors"][0]["value"] == "60 minutes"


@pytest.mark.asyncio
async def test_predict_rejects_invalid_json(client):
    response = await client.post("/v1/predict", data="{bars: [", headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert problem_fields(await response.json()) == ["request body"]


@pytest.mark.asyncio
async def test_predict_rejects_bytes_that_are_not_utf8(client):
    response = await client.post("/v1/predict", data=b'{"bars": "\xff"}', headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert "not UTF-8" in (await response.json())["errors"][0]["message"]


@pytest.mark.asyncio
async def test_predict_rejects_an_oversized_body(client):
    body = b'{"bars": [' + b" " * (32 * 1024 * 1024) + b"]}"
    response = await client.post("/v1/predict", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert "larger than" in (await response.json())["error"]


@pytest.mark.asyncio
async def test_predict_rejects_a_body_without_bars(client):
    response = await client.post("/v1/predict", json={"candles": []})
    assert response.status == 400
    assert problem_fields(await response.json()) == ["bars"]


@pytest.mark.asyncio
async def test_rejected_request_is_logged_without_the_payload(client, history, caplog):
    bars = [dict(bar) for bar in history]
    bars[2]["open"] = "bad"
    with caplog.at_level(logging.WARNING, logger="quanttrain.trainer.serve_app"):
        await client.post("/v1/predict", json={"bars": bars})
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("bars[2].open" in message for message in messages)
    assert not any(history[100]["timestamp"] in message for message in messages)


# -- WebSocket --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stream_warms_up_then_predicts_each_bar(client, model, history):
    replies = []
    async with client.ws_connect("/v1/stream") as socket_client:
        for bar in history:
            await socket_client.send_json(bar)
            replies.append(await socket_client.receive_json())
    kinds = [reply["type"] for reply in replies]
    assert kinds == ["pending"] * (model.warmup_bars - 1) + ["prediction"] * (EXTRA_BARS + 1)
    assert replies[0]["requiredBars"] == model.warmup_bars


@pytest.mark.asyncio
async def test_stream_agrees_with_the_http_predictions(client, history):
    http = await (await client.post("/v1/predict", json={"bars": history})).json()
    async with client.ws_connect("/v1/stream") as socket_client:
        for bar in history:
            await socket_client.send_json(bar)
            reply = await socket_client.receive_json()
    expected = http["predictions"][-1]
    assert reply["timestamp"] == expected["timestamp"]
    assert reply["label"] == expected["label"]
    assert reply["confidence"] == pytest.approx(expected["confidence"], abs=1e-12)


@pytest.mark.asyncio
async def test_stream_reports_an_older_bar_and_stays_open(client, history):
    async with client.ws_connect("/v1/stream") as socket_client:
        await socket_client.send_json(history[1])
        await socket_client.receive_json()
        await socket_client.send_json(history[0])
        error = await socket_client.receive_json()
        await socket_client.send_json(history[2])
        after = await socket_client.receive_json()
    assert error["type"] == "error"
    assert problem_fields(error) == ["bar.timestamp"]
    assert error["errors"][0]["value"] == history[0]["timestamp"]
    assert after["type"] == "pending"
    assert after["receivedBars"] == 2


@pytest.mark.asyncio
async def test_stream_reports_a_missing_column(client, history):
    bar = dict(history[0])
    del bar["high"]
    async with client.ws_connect("/v1/stream") as socket_client:
        await socket_client.send_json(bar)
        error = await socket_client.receive_json()
    assert error["type"] == "error"
    assert "missing field(s) high" in error["errors"][0]["message"]


@pytest.mark.asyncio
async def test_stream_reports_invalid_json(client):
    async with client.ws_connect("/v1/stream") as socket_client:
        await socket_client.send_str("not json")
        error = await socket_client.receive_json()
    assert problem_fields(error) == ["message"]


@pytest.mark.asyncio
async def test_stream_rejects_binary_messages(client):
    async with client.ws_connect("/v1/stream") as socket_client:
        await socket_client.send_bytes(b"\x00\x01")
        error = await socket_client.receive_json()
    assert "text message" in error["errors"][0]["message"]


# -- the serve command --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_command_answers_healthz_and_predict(registry, history):
    port = free_port()
    command = [sys.executable, "-m", "quanttrain.operator.cli", "serve", "--registry", str(registry),
               "--strategy", "Serving Test", "--version", "1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = _wait_for_health(port, process)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/predict", method="POST",
                                         data=json.dumps({"bars": history}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = json.loads(response.read())
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert health == {"status": "ok"}
    assert len(body["predictions"]) == EXTRA_BARS + 1
    assert f"serving {STRATEGY_KEY} version 1" in output


def _wait_for_health(port: int, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited with {process.returncode}: {process.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.2)
    raise AssertionError("serve did not answer /healthz within 45 s")


def test_serve_command_reports_an_unknown_strategy(registry, capsys):
    status = main(["serve", "--registry", str(registry), "--strategy", "no-such-strategy"])
    assert status == 2
    assert "no model of strategy 'no-such-strategy'" in capsys.readouterr().err


def test_serve_help_names_the_trainer_extra(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "quanttrain[trainer]" in capsys.readouterr().out


def test_serve_without_the_trainer_extra_names_it(registry, monkeypatch, capsys):
    # A None entry in sys.modules makes importing that module fail as if it were not installed.
    monkeypatch.delitem(sys.modules, "quanttrain.trainer.serve_app")
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    status = main(["serve", "--registry", str(registry), "--strategy", STRATEGY_KEY])
    assert status == 2
    assert "pip install 'quanttrain[trainer]'" in capsys.readouterr().err


def test_serve_on_a_busy_port_fails(registry, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        status = main(["serve", "--registry", str(registry), "--strategy", STRATEGY_KEY, "--port", str(port)])
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_stream_closes_on_an_oversized_message(client):
    async with client.ws_connect("/v1/stream") as socket_client:
        await socket_client.send_str("x" * (70 * 1024))
        await socket_client.receive()
    assert socket_client.close_code == 1009
