"""serve on loopback: predictions, every bad request's 4xx with /health answering after it, micro-batching of
concurrent requests, and SIGTERM finishing the request in flight. Every request is bounded by a timeout."""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import xlmr_compress as xc
from xlmr_compress.inference.serve import RequestError, parse_request
from xlmr_compress.tiny import save_tiny

TIMEOUT = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
    """One request on its own connection: the status and the decoded JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post(port: int, payload: object) -> tuple[int, object]:
    return call(port, "POST", "/predict", json.dumps(payload).encode())


def start(model: Path, **config: object) -> tuple[subprocess.Popen, int]:
    """A server in a child process on a free loopback port, once /health answers."""
    port = free_port()
    options = ", ".join(f"{k}={v!r}" for k, v in {"host": "127.0.0.1", "port": port, **config}.items())
    code = f"import sys, xlmr_compress as xc; xc.serve(sys.argv[1], xc.ServeConfig({options}))"
    log = tempfile.TemporaryFile("w+")  # a pipe nobody reads could fill and block the server
    process = subprocess.Popen([sys.executable, "-c", code, str(model)], stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise AssertionError(f"the server exited: {log.read()}")
        try:
            if call(port, "GET", "/health")[0] == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError("the server did not answer /health within 120 s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(TIMEOUT)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("serve") / "cls", "sequence-classification", 3)


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[int]:
    """max_batch 8 and a 500 ms wait, so concurrent requests surely meet in a batch."""
    process, port = start(model, max_batch=8, max_wait_ms=500.0)
    yield port
    stop(process)


def test_predict_health_and_info(server: int, model: Path) -> None:
    pipe = xc.pipeline(model)
    status, one = post(server, {"inputs": "hello world"})
    assert status == 200 and one[0]["label"] == pipe("hello world")[0]["label"]
    status, many = post(server, {"inputs": ["hello world", ["the movie", "a film"]], "top_k": 2})
    assert status == 200 and len(many) == 2 and all(len(r) == 2 for r in many)
    assert call(server, "GET", "/health") == (200, {"status": "ok"})
    status, info = call(server, "GET", "/info")
    assert status == 200 and info["task"] == "sequence-classification" and info["labels"] == ["L0", "L1", "L2"]
    assert info["kind"] == "torch" and info["precision"] == "fp32" and info["max_batch"] == 8


BAD = [
    (b"{not json", 400),
    (b"\xff\xfe", 400),
    (json.dumps([1, 2]).encode(), 422),
    (json.dumps({"text": "no inputs key"}).encode(), 422),
    (json.dumps({"inputs": ""}).encode(), 422),
    (json.dumps({"inputs": "   "}).encode(), 422),
    (json.dumps({"inputs": []}).encode(), 422),
    (json.dumps({"inputs": 42}).encode(), 422),
    (json.dumps({"inputs": ["ok", 7]}).encode(), 422),
    (json.dumps({"inputs": [["a", "b", "c"]]}).encode(), 422),
    (json.dumps({"inputs": {"question": "who?"}}).encode(), 422),
    (json.dumps({"inputs": "ok", "top_k": "two"}).encode(), 422),
    (json.dumps({"inputs": "x" * 100_000}).encode(), 413),
    (json.dumps({"inputs": ["ok"] * 10_000}).encode(), 413),
]


@pytest.mark.parametrize(("body", "status"), BAD, ids=[f"{s}-{i}" for i, (_, s) in enumerate(BAD)])
def test_bad_requests_get_their_4xx_and_the_server_goes_on(server: int, body: bytes, status: int) -> None:
    got, answer = call(server, "POST", "/predict", body)
    assert got == status and isinstance(answer, dict) and answer["error"]
    assert "\n" not in answer["error"]
    assert call(server, "GET", "/health")[0] == 200


def test_unknown_paths_and_methods_are_json_4xx(server: int) -> None:
    assert call(server, "GET", "/nowhere")[0] == 404
    status, answer = call(server, "GET", "/predict")
    assert status == 405 and "POST /predict" in answer["error"]
    assert call(server, "GET", "/health")[0] == 200


def test_concurrent_requests_are_micro_batched(server: int) -> None:
    before = call(server, "GET", "/info")[1]["batch_sizes"]
    results: list[tuple[int, object]] = []
    clients = [threading.Thread(target=lambda i=i: results.append(post(server, {"inputs": f"text {i} of the test"})))
               for i in range(16)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(TIMEOUT)
    assert len(results) == 16 and all(status == 200 for status, _ in results)
    after = call(server, "GET", "/info")[1]["batch_sizes"]
    new = {int(size): after[size] - before.get(size, 0) for size in after if after[size] != before.get(size, 0)}
    assert sum(size * calls for size, calls in new.items()) == 16
    assert max(new) > 1 and max(new) <= 8  # batched, and never over --max-batch


def test_sigterm_finishes_the_request_in_flight(model: Path) -> None:
    process, port = start(model, max_batch=64, max_wait_ms=3000.0)
    try:
        result: list[tuple[int, object]] = []
        client = threading.Thread(target=lambda: result.append(post(port, {"inputs": "still answered"})))
        client.start()
        deadline = time.monotonic() + TIMEOUT
        while call(port, "GET", "/info")[1]["in_flight"] == 0:  # the request waits in the batcher for 3 s
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        client.join(TIMEOUT)
        assert result and result[0][0] == 200 and result[0][1][0]["label"] in {"L0", "L1", "L2"}
        assert process.wait(TIMEOUT) == -signal.SIGTERM  # uvicorn re-raises the signal once drained
    finally:
        stop(process)


def test_qa_requests_parse_question_and_context(tmp_path: Path) -> None:
    pipe = xc.pipeline(save_tiny(tmp_path / "qa", "question-answering"))
    config = xc.ServeConfig()
    items, single, _ = parse_request({"question": "who?", "context": "john lives in paris"}, pipe, config)
    assert single and items == [("who?", "john lives in paris")]
    items, single, _ = parse_request({"inputs": [{"question": "a?", "context": "b"}] * 2}, pipe, config)
    assert not single and len(items) == 2
    answer = pipe.run(items)[0]
    assert "b"[answer["start"]:answer["end"]] == answer["answer"]
    for body in ({"question": "who?"}, {"inputs": "text"}, {"question": 1, "context": "x"},
                 {"question": "q", "context": "   "}, {"question": "q", "context": "x", "top_k": 1}):
        with pytest.raises(RequestError) as e:
            parse_request(body, pipe, config)
        assert e.value.status == 422


def test_refuses_a_port_in_use_before_loading(model: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(xc.UserError, match="--port"):
            xc.serve(model, xc.ServeConfig(port=taken.getsockname()[1]))
