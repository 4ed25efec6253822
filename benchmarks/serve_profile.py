"""Where one /api/predict request's CPU goes, in this process (no HTTP, no other clients).

    python benchmarks/serve_profile.py RUN_OR_CHECKPOINT [--rounds 5] [--n 300]

Times, as CPU time per request (the best of --rounds rounds of --n requests), each stage of
a 280x280 canvas PNG and of a prepared 28x28 JSON array: decoding, preparing, classifying,
and the whole request through the app as the server runs it (ASGI, classifying on the event
loop); what the app adds beyond the stages is FastAPI, pydantic and the answer's JSON.
Then the whole requests again with the processor's caches emptied between them (by writing
32 MiB, not timed), as they are in a server whose HTTP handling, clients and neighbours run
between two requests: code and data fetched from memory at every request.
serve_load.py measures the same requests over HTTP under load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import as_arrays, drawings, machine  # noqa: E402

from mnistlab.base.prepare import load_image, prepare_image  # noqa: E402
from mnistlab.commands.prediction import predict_array  # noqa: E402
from mnistlab.commands.serve import AllowedHosts, _json_array, create_app, load_models  # noqa: E402


def cpu_ms(work, items: list, rounds: int, n: int, between=None) -> float:
    """The best over `rounds` of the CPU milliseconds per call of work(item), n calls a round; with
    `between`, called before each call and not timed."""
    best = float("inf")
    for _ in range(rounds):
        spent = 0.0
        for i in range(n):
            if between is not None:
                between()
            t0 = time.process_time()
            work(items[i % len(items)])
            spent += time.process_time() - t0
        best = min(best, spent)
    return 1000 * best / n


def cache_flusher():
    """A call that writes 32 MiB: more than the processor's caches below the last level, so that the
    next request finds little of its code and data there."""
    memory = np.zeros(32 << 20, dtype=np.uint8)

    def flush() -> None:
        np.add(memory, 1, out=memory)

    return flush


def through_app(app, content_type: bytes, query: bytes = b""):
    """work(body): one POST /api/predict through the ASGI app, as uvicorn would call it."""
    loop = asyncio.new_event_loop()

    async def call(body: bytes) -> None:
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []

        async def receive():
            return pending.pop() if pending else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                   "scheme": "http", "path": "/api/predict", "raw_path": b"/api/predict", "query_string": query,
                   "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
                   "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", content_type),
                               (b"content-length", str(len(body)).encode())]}, receive, send)
        assert sent[0]["status"] == 200, sent

    return lambda body: loop.run_until_complete(call(body))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="run directory or checkpoint")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=300, help="requests per round (default: 300)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a server process
    served = load_models([args.model])
    checkpoint = served[0].checkpoint
    app = create_app(served, workers=0, hosts=AllowedHosts())
    gc.collect()
    gc.freeze()  # as a server process does after start-up
    canvases = [png for _, png in drawings(50, 280)]
    arrays = [body for _, body in as_arrays(drawings(50, 280))]
    pictures = [load_image(io.BytesIO(png)) for png in canvases]
    prepared = [prepare_image(p) for p in pictures]
    r, n = args.rounds, args.n
    rows = [
        ("canvas: decode the PNG (load_image)", cpu_ms(lambda b: load_image(io.BytesIO(b)), canvases, r, n)),
        ("canvas: prepare (prepare_image)", cpu_ms(prepare_image, pictures, r, n)),
        ("classify a 28x28 image (predict_array)", cpu_ms(lambda a: predict_array(checkpoint, a), prepared, r, n)),
        ("canvas: the whole request through the app", cpu_ms(through_app(app, b"image/png"), canvases, r, n)),
        ("array: parse and validate the JSON", cpu_ms(_json_array, arrays, r, 4 * n)),
        ("array: the whole request through the app", cpu_ms(through_app(app, b"application/json"), arrays, r, 4 * n)),
        ("array, ?activations=1 (as the page asks)",
         cpu_ms(through_app(app, b"application/json", b"activations=1"), arrays, r, 4 * n)),
    ]
    flush = cache_flusher()
    cold = [
        ("canvas: the whole request, caches emptied", cpu_ms(through_app(app, b"image/png"), canvases, r, n, flush)),
        ("array: the whole request, caches emptied",
         cpu_ms(through_app(app, b"application/json"), arrays, r, 4 * n, flush)),
    ]
    print(f"machine: {machine()}; torch {torch.__version__}, 1 thread; best of {r} rounds")
    for name, ms in rows:
        print(f"{name:45s} {ms:7.3f} ms")
    stages = dict(rows)
    canvas_rest = stages["canvas: the whole request through the app"] - sum(
        stages[k] for k in ("canvas: decode the PNG (load_image)", "canvas: prepare (prepare_image)",
                            "classify a 28x28 image (predict_array)"))
    array_rest = stages["array: the whole request through the app"] - stages["array: parse and validate the JSON"] - \
        stages["classify a 28x28 image (predict_array)"]
    print(f"{'the app beyond these stages, canvas':45s} {canvas_rest:7.3f} ms")
    print(f"{'the app beyond these stages, array':45s} {array_rest:7.3f} ms")
    for name, ms in cold:
        print(f"{name:45s} {ms:7.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
