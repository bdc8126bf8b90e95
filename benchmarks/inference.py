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
from benchmarks.results import update_section

SHARED = Path(__file__).resolve().parents[2] / "shared"


def sib_texts(data: str, limit: int | None) -> list[str]:
    """The test texts of SIB-200 in file order (the first `limit` of them)."""
    texts = xc.load_data(xc.DataConfig(path=data)).splits["test"]["text"][:]
    if any("\n" in t for t in texts):
        raise SystemExit("a test text holds a newline: it cannot go through a TXT file one text per line")
    return texts[:limit]


def sorting(model: str, texts: list[str], batch_size: int, repeats: int, threads: int | None) -> str:
    """Wall time of `predict` over the texts with batches taken in file order and sorted by length, after an untimed
    warm-up, in rounds that alternate which goes first."""
    with tempfile.TemporaryDirectory() as tmp:
        source, warm = Path(tmp) / "texts.txt", Path(tmp) / "warm-up.txt"
        source.write_text("\n".join(texts) + "\n", encoding="utf-8")
        warm.write_text("\n".join(texts[:4 * batch_size]) + "\n", encoding="utf-8")
        xc.predict(model, Path(tmp) / "warm-up.jsonl", xc.PredictConfig(input=str(warm), threads=threads))
        seconds: dict[bool, list[float]] = {False: [], True: []}
        outputs: dict[bool, list[dict]] = {}
        for r in range(repeats):
            for sort in (False, True) if r % 2 == 0 else (True, False):
                out = Path(tmp) / f"out-{sort}-{r}.jsonl"
                config = xc.PredictConfig(input=str(source), batch_size=batch_size, sort_by_length=sort,
                                          threads=threads)
                start = time.perf_counter()
                xc.predict(model, out, config)
                seconds[sort].append(time.perf_counter() - start)
                outputs[sort] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
                print(f"[sorting] round {r} sorted={sort}: {seconds[sort][-1]:.1f} s", flush=True)
    same = [a["label"] == b["label"] for a, b in zip(outputs[False], outputs[True], strict=True)]
    diff = max(abs(a["score"] - b["score"]) for a, b in zip(outputs[False], outputs[True], strict=True))
    # each round's two runs share the machine's load at that time, so the speed-up is taken per round
    ratios = [f / s for f, s in zip(seconds[False], seconds[True], strict=True)]
    rows = ["| round | file order: wall s (incl. model load) | sorted by length: wall s | speed-up |",
            "|---|---|---|---|"]
    rows += [f"| {r} | {f:.1f} ({len(texts) / f:.1f} texts/s) | {s:.1f} ({len(texts) / s:.1f} texts/s) | {q:.2f}x |"
             for r, (f, s, q) in enumerate(zip(seconds[False], seconds[True], ratios, strict=True))]
    return (f"{len(texts)} SIB-200 test texts, batch size {batch_size}, default chunk size, {repeats} round(s) after "
            f"a warm-up (which batching runs first alternates), model `{model}`.\n\n" + "\n".join(rows) +
            f"\n\nSpeed-up of length-sorted batching, median over rounds: **{statistics.median(ratios):.2f}x**. Both "
            f"runs write results in input order: the same label for {sum(same)}/{len(same)} texts, max score "
            f"difference {diff:.1e}.\n")


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


def load_run(port: int, texts: list[str], clients: int, requests: int) -> dict:
    """`requests` single-text POSTs spread over `clients` threads: throughput, latency percentiles, failures."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        for i in range(k, requests, clients):
            body = json.dumps({"inputs": texts[i % len(texts)]}).encode()
            start = time.perf_counter()
            try:
                ok = request(port, "POST", "/predict", body)[0] == 200
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
    sizes = {k: v - before.get(k, 0) for k, v in batch_sizes().items()}
    return {"throughput": requests / wall, "p50": 1000 * float(np.percentile(latencies, 50)),
            "p99": 1000 * float(np.percentile(latencies, 99)), "failures": failures[0],
            "mean_batch": sum(k * v for k, v in sizes.items()) / sum(sizes.values())}


def load(model: str, texts: list[str], clients: int, requests: int, max_batch: int, max_wait_ms: float,
         threads: int | None, port: int) -> str:
    """The same load against serve with micro-batching and with --max-batch 1, one after the other."""
    results = {}
    with tempfile.TemporaryFile("w+") as log:
        for name, batch in ((f"micro-batching (max batch {max_batch}, wait {max_wait_ms:g} ms)", max_batch),
                            ("no batching (max batch 1)", 1)):
            process = start_server(model, port, batch, max_wait_ms, threads, log)
            try:
                load_run(port, texts, clients, 2 * clients)  # warm-up, left out of every figure
                results[name] = load_run(port, texts, clients, requests)
            finally:
                process.terminate()
                process.wait(60)
            print(f"[load] {name}: {results[name]}", flush=True)
    rows = ["| server | requests/s | p50 ms | p99 ms | failed | mean texts per model call |",
            "|---|---|---|---|---|---|"]
    rows += [f"| {name} | {r['throughput']:.1f} | {r['p50']:.0f} | {r['p99']:.0f} | {r['failures']} | "
             f"{r['mean_batch']:.1f} |" for name, r in results.items()]
    batched, single = results.values()
    gain = batched["throughput"] / single["throughput"]
    return (f"{clients} concurrent loopback clients, {requests} single-text requests per server (SIB-200 test texts), "
            f"model `{model}`.\n\n" + "\n".join(rows) + f"\n\nThroughput of micro-batching over --max-batch 1: "
            f"**{gain:.2f}x**; failed requests: {batched['failures'] + single['failures']}.\n")


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
    ap.add_argument("--requests", type=int, default=800, help="load: requests per server")
    ap.add_argument("--max-batch", type=int, default=32, help="load: the micro-batching server's --max-batch")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="load: the servers' --max-wait-ms")
    ap.add_argument("--port", type=int, default=8087, help="load: loopback port of the servers")
    a = ap.parse_args()
    texts = sib_texts(a.data, a.limit)
    if a.study == "sorting":
        body = sorting(a.models[0], texts, a.batch_size, a.repeats, a.threads)
        update_section("inference-sorting", "Inference: predict with length-sorted batching (SIB-200 test)", body)
    elif a.study == "load":
        body = load(a.models[0], texts, a.clients, a.requests, a.max_batch, a.max_wait_ms, a.threads, a.port)
        update_section("inference-load", "Inference: serve under a loopback load (16 clients)", body)
    else:
        body = agreement(a.models, texts, a.batch_size, a.threads)
        update_section("inference-agreement", "Inference: same answers across directory kinds (SIB-200 test)", body)
    print(body)


if __name__ == "__main__":
    main()
