"""A bounded load test of `mnistlab serve` on loopback: canvas PNGs posted by concurrent clients.

    python benchmarks/serve_load.py RUN_OR_CHECKPOINT [--requests 5000] [--clients 8] [--size 280]

Starts `mnistlab serve RUN --port 0` on 127.0.0.1 (or uses --url, a server already
running on this machine), posts --requests drawings from --clients threads, each
with its own keep-alive connection, and prints requests per second, latency
percentiles, errors, and the server's resident memory before and after. The
drawings are digits drawn as strokes, dark on white paper, as the page exports
them; how many the model gets right is printed too (a sanity check, not a
benchmark of accuracy). The clients run on the same machine as the server and
take CPU from it.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

# Digits as strokes on a unit square (x right, y down), drawn with a round brush.
DIGITS = {
    0: [[(0.5 + 0.2 * math.sin(math.radians(a)), 0.5 - 0.3 * math.cos(math.radians(a))) for a in range(0, 361, 20)]],
    1: [[(0.45, 0.3), (0.55, 0.2), (0.55, 0.8)]],
    2: [[(0.3, 0.32), (0.4, 0.22), (0.6, 0.2), (0.7, 0.32), (0.65, 0.48), (0.3, 0.8), (0.72, 0.8)]],
    3: [[(0.5 + 0.17 * math.sin(math.radians(a)), 0.35 - 0.15 * math.cos(math.radians(a))) for a in range(-70, 181, 15)]
        + [(0.5 + 0.19 * math.sin(math.radians(a)), 0.66 - 0.16 * math.cos(math.radians(a))) for a in range(0, 251, 15)]],
    4: [[(0.6, 0.8), (0.6, 0.2), (0.28, 0.6), (0.75, 0.6)]],
    5: [[(0.7, 0.2), (0.35, 0.2), (0.32, 0.47)]
        + [(0.48 + 0.2 * math.sin(math.radians(a)), 0.62 - 0.17 * math.cos(math.radians(a))) for a in range(-60, 241, 15)]],
    6: [[(0.62, 0.18), (0.42, 0.4)]
        + [(0.5 + 0.17 * math.sin(math.radians(a)), 0.63 - 0.17 * math.cos(math.radians(a))) for a in range(-120, 241, 15)]],
    7: [[(0.3, 0.22), (0.72, 0.22), (0.44, 0.84)]],
    8: [[(0.5 + 0.15 * math.sin(math.radians(a)), 0.34 - 0.14 * math.cos(math.radians(a))) for a in range(180, -181, -15)]
        + [(0.5 + 0.18 * math.sin(math.radians(a)), 0.65 - 0.17 * math.cos(math.radians(a))) for a in range(0, 361, 15)]],
    9: [[(0.5 + 0.16 * math.sin(math.radians(a)), 0.36 - 0.15 * math.cos(math.radians(a))) for a in range(90, 451, 15)]
        + [(0.66, 0.8)]],
}


def drawings(n: int, size: int, seed: int = 0) -> list[tuple[int, bytes]]:
    """(digit, PNG bytes) canvases: each digit's strokes shifted, scaled and rotated a little."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for i in range(n):
        digit = i % 10
        angle, scale = math.radians(rng.uniform(-8, 8)), rng.uniform(0.8, 1.1)
        dx, dy = rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        for stroke in DIGITS[digit]:
            points = []
            for x, y in stroke:
                x, y = (x - 0.5) * scale, (y - 0.5) * scale
                x, y = x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)
                points.append(((x + 0.5 + dx) * size, (y + 0.5 + dy) * size))
            draw.line(points, fill="black", width=round(0.075 * size), joint="curve")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append((digit, buffer.getvalue()))
    return out


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (Linux /proc), in MiB."""
    fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M))
    return {"rss": int(fields["VmRSS"]) / 1024, "peak": int(fields["VmHWM"]) / 1024}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def start_server(model: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", model, "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(5):
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if match:
            return process, match.group(0)
        if not line:
            break
    process.kill()
    sys.exit(f"serve_load: the server did not start: {process.stderr.read().strip()}")


def as_arrays(images: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The same drawings as JSON 28x28 arrays, already prepared (--body array: no preparation on the server)."""
    from mnistlab.base.prepare import load_image, prepare_image

    return [(digit, json.dumps({"image": prepare_image(load_image(io.BytesIO(png))).tolist()}).encode())
            for digit, png in images]


def run_load(url: str, images: list[tuple[int, bytes]], requests: int, clients: int, query: str,
             deadline: float, content_type: str = "image/png") -> dict:
    parts = urlsplit(url)
    lock = threading.Lock()
    issued = iter(range(requests))
    latencies: list[float] = []
    errors: list[str] = []
    right = [0]

    def client() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        while time.perf_counter() < deadline:
            with lock:
                i = next(issued, None)
            if i is None:
                break
            digit, body = images[i % len(images)]
            t0 = time.perf_counter()
            try:
                connection.request("POST", f"/api/predict{query}", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                data = response.read()
                elapsed = time.perf_counter() - t0
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
                answer = json.loads(data)
            except Exception as e:  # noqa: BLE001 - every failure counts as an error
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                connection.close()
                connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                continue
            with lock:
                latencies.append(elapsed)
                right[0] += answer["prediction"] == digit
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else math.nan

    return {"requests": len(latencies) + len(errors), "ok": len(latencies), "errors": len(errors),
            "first_errors": errors[:5], "seconds": wall, "requests_per_second": len(latencies) / wall,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": 1000 * latencies[-1] if latencies else math.nan,
            "right": right[0]}


def machine() -> str:
    cpu = platform.processor()
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="run directory or checkpoint to serve (not with --url)")
    parser.add_argument("--url", help="a server already running on this machine, e.g. http://127.0.0.1:8000/")
    parser.add_argument("--requests", type=int, default=5000, help="requests in all (default: 5000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--size", type=int, default=280, help="canvas side in pixels (default: 280)")
    parser.add_argument("--images", type=int, default=50, help="distinct drawings, posted in turn (default: 50)")
    parser.add_argument("--activations", action="store_true", help="ask for the hidden layers too, as the page does")
    parser.add_argument("--body", choices=["png", "array"], default="png",
                        help="png: canvas PNGs (default); array: the same drawings as prepared 28x28 JSON arrays, "
                        "to measure everything but the image preparation")
    parser.add_argument("--max-seconds", type=float, default=1200, help="stop after this long (default: 1200)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if (args.model is None) == (args.url is None):
        parser.error("give a model to serve, or --url of a running server")
    host = urlsplit(args.url).hostname if args.url else "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be on this machine (127.0.0.1, localhost or ::1)")

    images = drawings(args.images, args.size)
    content_type = "image/png"
    if args.body == "array":
        images, content_type = as_arrays(images), "application/json"
    process, url = start_server(args.model) if args.model else (None, args.url)
    try:
        before = rss_mb(process.pid) if process else None
        query = "?activations=1" if args.activations else ""
        warm = run_load(url, images, min(20, args.requests), 2, query, time.perf_counter() + 120, content_type)
        if warm["errors"]:
            sys.exit(f"serve_load: warm-up failed: {warm['first_errors']}")
        server_cpu, client_cpu = cpu_seconds(process.pid) if process else math.nan, time.process_time()
        result = run_load(url, images, args.requests, args.clients, query,
                          time.perf_counter() + args.max_seconds, content_type)
        client_cpu = time.process_time() - client_cpu
        server_cpu = cpu_seconds(process.pid) - server_cpu if process else math.nan
        after = rss_mb(process.pid) if process else None
    finally:
        if process:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    result.update(machine=machine(), clients=args.clients, size=args.size, activations=args.activations, body=args.body,
                  body_bytes=sum(len(b) for _, b in images) / len(images),
                  rss_before_mb=before and before["rss"], rss_after_mb=after and after["rss"],
                  rss_peak_mb=after and after["peak"],
                  server_cpu_ms_per_request=1000 * server_cpu / max(1, result["requests"]),
                  client_cpu_ms_per_request=1000 * client_cpu / max(1, result["requests"]),
                  load_average=os.getloadavg())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"machine: {result['machine']}")
        what = (f"{args.size}x{args.size} canvas PNGs" if args.body == "png"
                else f"prepared 28x28 JSON arrays (from {args.size}x{args.size} canvases)")
        print(f"{result['requests']} requests of {what} "
              f"(mean {result['body_bytes'] / 1024:.1f} KiB) from {args.clients} clients"
              + (", with activations" if args.activations else ""))
        print(f"errors: {result['errors']}" + (f"  first: {result['first_errors']}" if result["errors"] else ""))
        print(f"throughput: {result['requests_per_second']:.1f} requests/s over {result['seconds']:.1f} s")
        print(f"latency: p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms"
              f"  max {result['max_ms']:.1f} ms")
        print(f"CPU per request: server {result['server_cpu_ms_per_request']:.1f} ms, clients "
              f"{result['client_cpu_ms_per_request']:.1f} ms (both on this machine; load average at the end "
              f"{result['load_average'][0]:.1f})")
        if before:
            print(f"server memory (RSS): {before['rss']:.0f} MiB before, {after['rss']:.0f} MiB after "
                  f"(peak {after['peak']:.0f} MiB)")
        print(f"answers matching the drawn digit: {result['right']}/{result['ok']}")
    return 1 if result["errors"] or result["requests"] < args.requests else 0


if __name__ == "__main__":
    sys.exit(main())
