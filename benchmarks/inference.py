"""Inference study: predict's length-sorted batching, serve under load, and agreement across directory kinds.

    python -m benchmarks.inference sorting MODEL              # predict over SIB-200 test: sorted vs file order
    python -m benchmarks.inference load MODEL                 # 16 loopback clients: micro-batching vs --max-batch 1
    python -m benchmarks.inference agreement TORCH ONNX INT8  # labels and scores of each kind against the first

Every figure goes through the public API (xc.predict, xc.serve, xc.pipeline) on the SIB-200 test texts, in file
order (languages in directory order, rows as in each file), and lands in a section of RESULTS.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

import xlmr_compress as xc
from benchmarks import SHARED
from benchmarks.results import update_section


def sib_texts(data: str, limit: int | None) -> list[str]:
    """The test texts of SIB-200 in file order (the first `limit` of them)."""
    texts = xc.load_data(xc.DataConfig(path=data)).splits["test"]["text"][:]
    if any("\n" in t for t in texts):
        raise SystemExit("a test text holds a newline: it cannot go through a TXT file one text per line")
    return texts[:limit]


def sorting(model: str, texts: list[str], batch_size: int, repeats: int, threads: int | None) -> str:
    """Wall time of `predict` over the texts with batches taken in file order and sorted by length, with padded and
    with packed batches, after an untimed warm-up, in rounds that alternate the order of the four runs."""
    variants = [(pack, sort) for pack in (False, True) for sort in (False, True)]
    names = {(False, False): "padded, file order", (False, True): "padded, sorted by length",
             (True, False): "packed, file order", (True, True): "packed, sorted by length"}
    with tempfile.TemporaryDirectory() as tmp:
        source, warm = Path(tmp) / "texts.txt", Path(tmp) / "warm-up.txt"
        source.write_text("\n".join(texts) + "\n", encoding="utf-8")
        warm.write_text("\n".join(texts[:4 * batch_size]) + "\n", encoding="utf-8")
        xc.predict(model, Path(tmp) / "warm-up.jsonl", xc.PredictConfig(input=str(warm), threads=threads))
        seconds: dict[tuple, list[float]] = {v: [] for v in variants}
        outputs: dict[tuple, list[dict]] = {}
        for r in range(repeats):
            for pack, sort in variants if r % 2 == 0 else variants[::-1]:
                out = Path(tmp) / f"out-{pack}-{sort}-{r}.jsonl"
                config = xc.PredictConfig(input=str(source), batch_size=batch_size, sort_by_length=sort, pack=pack,
                                          threads=threads)
                start = time.perf_counter()
                xc.predict(model, out, config)
                seconds[pack, sort].append(time.perf_counter() - start)
                outputs[pack, sort] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
                print(f"[sorting] round {r} {names[pack, sort]}: {seconds[pack, sort][-1]:.1f} s", flush=True)
    reference = outputs[False, False]
    same = min(sum(a["label"] == b["label"] for a, b in zip(reference, outputs[v], strict=True)) for v in variants)
    diff = max(abs(a["score"] - b["score"]) for v in variants for a, b in zip(reference, outputs[v], strict=True))

    def gain(slow: tuple, fast: tuple) -> float:
        """Median over rounds of the per-round ratio: each round's runs share the machine's load at that time."""
        return statistics.median(a / b for a, b in zip(seconds[slow], seconds[fast], strict=True))

    rows = ["| batches | " + " | ".join(f"round {r}: wall s (texts/s)" for r in range(repeats)) + " |",
            "|---|" + "---|" * repeats]
    rows += [f"| {names[v]} | " + " | ".join(f"{t:.1f} ({len(texts) / t:.1f})" for t in seconds[v]) + " |"
             for v in variants]
    return (f"{len(texts)} SIB-200 test texts, batch size {batch_size}, default chunk size, {repeats} round(s) after "
            f"a warm-up (the order of the four runs alternates), model `{model}`; wall time includes loading the "
            "model. Padded: every row computed at the batch's longest length (`--no-pack`); packed (the default for "
            "torch models): a batch over 10% padding runs as one row of real tokens, padded only inside attention."
            "\n\n" + "\n".join(rows) +
            "\n\nSpeed-up of length-sorted batching over file order, median over rounds: "
            f"**{gain((0, 0), (0, 1)):.2f}x** with padded batches, {gain((1, 0), (1, 1)):.2f}x with packed ones. "
            f"Packing over padding: {gain((0, 0), (1, 0)):.2f}x in file order, {gain((0, 1), (1, 1)):.2f}x sorted. "
            f"Every run writes results in input order: the same label as padded file order for at least "
            f"{same}/{len(texts)} texts, max score difference {diff:.1e}.\n")


def start_server(model: str, port: int, max_batch: int, max_wait_ms: float, threads: int | None,
                 log: object) -> subprocess.Popen:
    """`serve` in a child process, once /health answers."""
    options = dict(host="127.0.0.1", port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads)
    code = ("import sys, xlmr_compress as xc; "
            f"xc.serve(sys.argv[1], xc.ServeConfig({', '.join(f'{k}={v!r}' for k, v in options.items())}))")
    process = subprocess.Popen([sys.executable, "-c", code, model], stderr=log)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if request(port, "GET", "/health")[0] == 200:
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    log.seek(0)
    raise SystemExit(f"the server on port {port} did not start:\n{log.read()[-3000:]}")


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def load_run(port: int, texts: list[str], clients: int, requests: int, keep_alive: bool = False) -> dict:
    """`requests` single-text POSTs spread over `clients` threads (each on one kept-alive connection, or a new
    connection per request): wall time, latencies, failures, model calls."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120) if keep_alive else None
        for i in range(k, requests, clients):
            body = json.dumps({"inputs": texts[i % len(texts)]}).encode()
            start = time.perf_counter()
            try:
                if conn is None:
                    ok = request(port, "POST", "/predict", body)[0] == 200
                else:
                    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                    response = conn.getresponse()
                    ok = response.status == 200 and bool(response.read())
            except OSError:
                ok = False
            with lock:
                latencies.append(time.perf_counter() - start)
                failures[0] += not ok

    def batch_sizes() -> dict[int, int]:
        return {int(k): v for k, v in json.loads(request(port, "GET", "/info")[1])["batch_sizes"].items()}

    before = batch_sizes()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    calls = sum(v - before.get(k, 0) for k, v in batch_sizes().items())
    return {"requests": requests, "wall": wall, "latencies": latencies, "failures": failures[0], "calls": calls}


def model_gain(model: str, texts: list[str], batch: int, rounds: int, threads: int | None) -> list[float]:
    """The model's own gain from batching, without a server: pipeline throughput on the same texts taken `batch` at
    a time against one at a time, per round (which goes first alternates). The ceiling of what micro-batching gives."""
    pipe = xc.pipeline(model, threads=threads, batch_size=batch)
    pipe(texts[:batch])  # warm-up
    seconds: dict[int, list[float]] = {1: [], batch: []}
    for r in range(rounds):
        for size in (1, batch) if r % 2 == 0 else (batch, 1):
            start = time.perf_counter()
            for first in range(0, len(texts), size):
                pipe(texts[first:first + size])
            seconds[size].append(time.perf_counter() - start)
    return [one / many for one, many in zip(seconds[1], seconds[batch], strict=True)]


def load(model: str, texts: list[str], clients: int, requests: int, rounds: int, max_batch: int, max_wait_ms: float,
         threads: int | None, port: int, keep_alive: bool) -> str:
    """The same load against serve with micro-batching and with --max-batch 1: both servers up at once (one idle
    while the other is loaded), in rounds that alternate which goes first, so a drift in the machine's speed hits
    both alike; the gain is taken per round."""
    names = [f"micro-batching (max batch {max_batch}, wait {max_wait_ms:g} ms)", "no batching (max batch 1)"]
    ports = {names[0]: port, names[1]: port + 1}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryFile("w+") as log:
        servers = [start_server(model, ports[name], batch, max_wait_ms, threads, log)
                   for name, batch in zip(names, (max_batch, 1), strict=True)]
        try:
            for name in names:
                load_run(ports[name], texts, clients, 2 * clients)  # warm-up, left out of every figure
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    runs[name].append(load_run(ports[name], texts, clients, requests // rounds, keep_alive))
                    rate = runs[name][-1]["requests"] / runs[name][-1]["wall"]
                    print(f"[load] round {r} {name}: {rate:.1f} requests/s", flush=True)
        finally:
            for process in servers:
                process.terminate()
                process.wait(60)
    rows = ["| server | requests/s | p50 ms | p99 ms | failed | mean texts per model call |",
            "|---|---|---|---|---|---|"]
    for name in names:
        done = sum(run["requests"] for run in runs[name])
        latencies = [x for run in runs[name] for x in run["latencies"]]
        rows.append(f"| {name} | {done / sum(run['wall'] for run in runs[name]):.1f} | "
                    f"{1000 * np.percentile(latencies, 50):.0f} | {1000 * np.percentile(latencies, 99):.0f} | "
                    f"{sum(run['failures'] for run in runs[name])} | "
                    f"{done / sum(run['calls'] for run in runs[name]):.1f} |")
    gains = [single["wall"] / batched["wall"] for batched, single in zip(*runs.values(), strict=True)]
    failed = sum(run["failures"] for name in names for run in runs[name])
    ceiling = model_gain(model, texts[:12 * clients], clients, rounds, threads)
    connections = "one kept-alive connection each" if keep_alive else "a new connection per request"
    return (f"{clients} concurrent loopback clients ({connections}), {requests} single-text requests "
            f"per server in {rounds} rounds (SIB-200 test texts), model `{model}`.\n\n" + "\n".join(rows) +
            "\n\nThroughput of micro-batching over --max-batch 1, per round: " +
            ", ".join(f"{g:.2f}x" for g in gains) + f"; median **{statistics.median(gains):.2f}x**, lowest "
            f"{min(gains):.2f}x. Failed requests: {failed}.\n\nThe model alone, without a server (`xc.pipeline` in "
            f"this process, after the servers stopped), on {12 * clients} of the same texts {clients} at a time "
            "against one at a time, per round: " + ", ".join(f"{g:.2f}x" for g in ceiling) +
            f"; median {statistics.median(ceiling):.2f}x: the ceiling of what batching {clients} clients' texts can "
            "gain on this machine.\n")


def agreement(models: list[str], texts: list[str], batch_size: int, threads: int | None) -> str:
    """Labels and every label's score of each model directory against the first one's."""
    scores, rows = [], ["| model | kind | precision | same label | max abs score diff | texts/s |",
                        "|---|---|---|---|---|---|"]
    for model in models:
        pipe = xc.pipeline(model, threads=threads, batch_size=batch_size)
        start = time.perf_counter()
        ranked = pipe(texts, top_k=len(pipe.label_names))
        rate = len(texts) / (time.perf_counter() - start)
        scores.append(np.asarray([[{r["label"]: r["score"] for r in row}[name] for name in pipe.label_names]
                                  for row in ranked]))
        same = float(np.mean(scores[-1].argmax(1) == scores[0].argmax(1)))
        diff = float(np.abs(scores[-1] - scores[0]).max())
        info = pipe.info()
        rows.append(f"| `{Path(model).name}` | {info['kind']} | {info['precision']} | {100 * same:.2f}% | "
                    f"{diff:.1e} | {rate:.1f} |")
        print(f"[agreement] {rows[-1]}", flush=True)
    return (f"{len(texts)} SIB-200 test texts through `xc.pipeline` (batch size {batch_size}); each row against "
            f"`{Path(models[0]).name}`.\n\n" + "\n".join(rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", choices=["sorting", "load", "agreement"])
    ap.add_argument("models", nargs="+", help="model directories (agreement: the reference first)")
    ap.add_argument("--data", default=str(SHARED / "data" / "sib200"), help="SIB-200 (its test split is used)")
    ap.add_argument("--limit", type=int, help="only the first N test texts")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    ap.add_argument("--threads", type=int, help="CPU threads of the model (default: the runtime's own)")
    ap.add_argument("--repeats", type=int, default=2, help="sorting: rounds per batching (which runs first alternates)")
    ap.add_argument("--clients", type=int, default=16, help="load: concurrent clients")
    ap.add_argument("--requests", type=int, default=800, help="load: requests per server, over all rounds")
    ap.add_argument("--rounds", type=int, default=4, help="load: rounds per server (which goes first alternates)")
    ap.add_argument("--keep-alive", action="store_true", help="load: each client keeps one connection open")
    ap.add_argument("--max-batch", type=int, default=32, help="load: the micro-batching server's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="load: the servers' --max-wait-ms")
    ap.add_argument("--port", type=int, default=8087, help="load: loopback port of the batching server (+1: the other)")
    ap.add_argument("--key", help="RESULTS.md section key (default: inference-STUDY), to keep runs on other models")
    a = ap.parse_args()
    texts = sib_texts(a.data, a.limit)
    if a.study == "sorting":
        body = sorting(a.models[0], texts, a.batch_size, a.repeats, a.threads)
        update_section(a.key or "inference-sorting", "Inference: predict with length-sorted batching (SIB-200 test)",
                       body)
    elif a.study == "load":
        body = load(a.models[0], texts, a.clients, a.requests, a.rounds, a.max_batch, a.max_wait_ms, a.threads, a.port,
                    a.keep_alive)
        update_section(a.key or "inference-load", "Inference: serve under a loopback load (16 clients)", body)
    else:
        body = agreement(a.models, texts, a.batch_size, a.threads)
        update_section(a.key or "inference-agreement",
                       "Inference: same answers across directory kinds (SIB-200 test)", body)
    print(body)


if __name__ == "__main__":
    main()
