"""The demo under load: concurrent API clients against one server, batched and not, side by side in one run.

    python benchmarks/demo_load.py [--model shapes32] [--requests 16] [--clients 1 8 16 32] [--rounds 3]

Serves the demo (``guided_diffusion.demo``) on a local port in this process (or, with
``--server-process``, ``python app.py`` in a process of its own, as a deployment runs it, so that the
clients' threads do not share the server's interpreter lock), with ``--model``'s own sampling config, and sends ``/generate`` requests of ``--images`` images each through ``gradio_client``:

- ``serial_s``: ``--requests`` requests one after another from one client;
- ``concurrent_s``: the same requests sent at once by as many clients, on the default server (batches of
  up to ``--max-batch-images`` images), and ``unbatched_s`` on a server whose batches hold one request
  (each request sampled alone, one after another); ``ratio`` is ``concurrent_s / serial_s``.
- latency: for each count in ``--clients``, that many clients each send one request at the same moment,
  ``--rounds`` times; p50 and p95 of the per-request seconds (submit to images), and the batch sizes the
  server ran.

The phases are interleaved round by round so that a drift of the machine's speed hits them alike. Prints
a markdown table; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gradio_client import Client

from guided_diffusion.demo import DemoModels, SamplingBatcher, build_demo, launch_demo
from guided_diffusion.demo.batching import DEFAULT_GATHER_SECONDS, DEFAULT_MAX_BATCH_IMAGES

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a large red circle in the center", "a small blue square in the top left", "a green triangle", "a yellow circle"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The demo of ``model`` on a free local port with a batcher of ``max_batch_images``, and a pool of
    clients connected to it."""

    def __init__(self, model: str, max_batch_images: int, concurrency: int, num_clients: int, gather_seconds: float) -> None:
        self.batcher = SamplingBatcher(max_batch_images, gather_seconds=gather_seconds)
        self.demo = build_demo(
            DemoModels.from_names([model]), batcher=self.batcher, concurrency_limit=concurrency, max_queue=4 * num_clients
        )
        self.url = launch_demo(self.demo, port=free_port(), prevent_thread_lock=True)
        self.clients = [Client(self.url, verbose=False) for _ in range(num_clients)]

    def close(self) -> None:
        self.demo.close()
        self.batcher.close()


class ServerProcess:
    """``python app.py`` serving ``model`` in a process of its own (so that the clients' Python threads
    do not share its interpreter lock), and a pool of clients connected to it; ``batcher`` is None."""

    batcher = None

    def __init__(self, model: str, max_batch_images: int, num_clients: int) -> None:
        port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--model", model, "--port", str(port), "--device", "cpu",
             "--max-batch-images", str(max_batch_images), "--queue-size", str(4 * num_clients)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 300
        while True:
            try:
                self.clients = [Client(self.url, verbose=False) for _ in range(num_clients)]
                break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.close()
                    raise RuntimeError(f"app.py did not start serving on {self.url}") from None
                time.sleep(1)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def request_kwargs(i: int, images: int) -> dict[str, Any]:
    return {"prompt": PROMPTS[i % len(PROMPTS)], "num_images": images, "seed": i, "api_name": "/generate"}


def concurrent(server: Server, count: int, images: int) -> tuple[float, list[float]]:
    """Wall seconds until ``count`` requests sent at once are all answered, and each one's seconds."""

    def one(i: int) -> float:
        started = time.perf_counter()
        result = server.clients[i].predict(**request_kwargs(i, images))
        assert len(result) == images
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        latencies = list(pool.map(one, range(count)))
    return time.perf_counter() - started, latencies


def serial(server: Server, count: int, images: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        server.clients[0].predict(**request_kwargs(i, images))
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def interleaved(phases: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[Any]]:
    """Each phase's results over ``rounds`` rounds, alternating the order from round to round."""
    results: dict[str, list[Any]] = {name: [] for name in phases}
    for r in range(rounds):
        for name in list(phases) if r % 2 == 0 else reversed(list(phases)):
            results[name].append(phases[name]())
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes32", help="shipped model name or pipeline folder")
    parser.add_argument("--requests", type=int, default=16, help="requests of the serial/concurrent comparison")
    parser.add_argument("--images", type=int, default=2, help="images per request")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 16, 32], help="client counts of the latency table")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch-images", type=int, default=DEFAULT_MAX_BATCH_IMAGES)
    parser.add_argument("--gather-seconds", type=float, default=DEFAULT_GATHER_SECONDS, help="the batcher's quiet time before a batch")
    parser.add_argument("--server-process", action="store_true",
                        help="serve with python app.py in its own process (the default quiet time; no batch sizes)")
    args = parser.parse_args()

    most = max(args.requests, *args.clients)
    if args.server_process:  # app.py --max-batch-images 1 also admits one request at a time: the same, one by one
        batched, unbatched = ServerProcess(args.model, args.max_batch_images, most), ServerProcess(args.model, 1, most)
    else:
        batched = Server(args.model, args.max_batch_images, args.max_batch_images, most, args.gather_seconds)
        unbatched = Server(args.model, 1, args.max_batch_images, most, args.gather_seconds)  # one request a batch: each alone
    try:
        for server in (batched, unbatched):  # warm-up: first calls load and trace
            concurrent(server, 2, args.images)
        comparison = interleaved(
            {
                "serial_s": lambda: serial(batched, args.requests, args.images),
                "concurrent_s": lambda: concurrent(batched, args.requests, args.images)[0],
                "unbatched_s": lambda: concurrent(unbatched, args.requests, args.images)[0],
            },
            args.rounds,
        )
        medians = {name: statistics.median(values) for name, values in comparison.items()}
        latency = {}
        for count in args.clients:
            before = len(batched.batcher.batch_sizes) if batched.batcher else 0
            seconds = [s for _ in range(args.rounds) for s in concurrent(batched, count, args.images)[1]]
            latency[count] = {
                "p50_s": percentile(seconds, 50),
                "p95_s": percentile(seconds, 95),
                "batch_sizes": sorted(set(batched.batcher.batch_sizes[before:])) if batched.batcher else [],
            }
    finally:
        batched.close()
        unbatched.close()

    ratio = medians["concurrent_s"] / medians["serial_s"]
    print(f"{args.model}, {args.requests} requests of {args.images} images, gather {args.gather_seconds} s, torch threads {torch.get_num_threads()}")
    print("| phase | median s | per round |\n|---|---:|---|")
    for name, values in comparison.items():
        print(f"| {name} | {medians[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    print(f"\nconcurrent / serial: **{ratio:.3f}**; unbatched concurrent / serial: {medians['unbatched_s'] / medians['serial_s']:.3f}\n")
    print("| clients | p50 s | p95 s | requests per batch |\n|---:|---:|---:|---|")
    for count, row in latency.items():
        print(f"| {count} | {row['p50_s']:.2f} | {row['p95_s']:.2f} | {', '.join(map(str, row['batch_sizes'])) or 'n/a'} |")
    print(json.dumps({"model": args.model, **medians, "ratio": ratio, "latency": latency}))


if __name__ == "__main__":
    main()
