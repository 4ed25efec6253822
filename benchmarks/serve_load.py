"""A bounded load test of `mnistlab serve` on loopback: canvas PNGs posted by concurrent clients,
alone, or beside clients that hold on (idle, slow, oversized) or beside a training run.

    python benchmarks/serve_load.py RUN_OR_CHECKPOINT [--requests 5000] [--clients 8] [--size 280]
        [--body png|array] [--adversaries] [--train DATA_DIR] [--processes N]

Starts `mnistlab serve RUN --port 0` on 127.0.0.1 (or uses --url, a server already
running on this machine), posts --requests drawings from --clients threads, each
with its own keep-alive connection, and prints requests per second, latency
percentiles, errors, the CPU time the server (all its processes) spent per request
and its memory. The drawings are digits drawn as strokes, dark on white paper, as
the page exports them; how many the model gets right is printed too (a sanity
check, not a benchmark of accuracy). The clients run on the same machine as the
server and take CPU from it.

--adversaries measures the normal clients three times in one run: alone, while
1,000 idle sockets, slow clients (headers or bodies dribbled a byte at a time),
clients sending 100 MB headers and clients posting 88-megapixel PNGs hit the same
server, and alone again. --train DATA_DIR does the same with a training run of the
seed recipe on the real MNIST in DATA_DIR (`python -m mnistlab train --recipe seed`)
in place of the adversaries. --train-from-page DATA_DIR starts that training run the
way the lab's page does: the server serves a folder holding a copy of RUN (`mnistlab
serve FOLDER --data-dir DATA_DIR`), the run is asked for with POST /api/runs and
followed through the API, and the drawings name RUN's model. The training process
is not counted in the server's CPU (it has a session of its own).
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
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def drawings(n: int, size: int, seed: int = 0, grey: bool = False) -> list[tuple[int, bytes]]:
    """(digit, PNG bytes) canvases: each digit's strokes shifted, scaled and rotated a little.

    RGBA, opaque: a browser's canvas.toBlob("image/png") writes four channels even when the page
    painted its paper white (Chromium does), and the server's preparation reads an alpha channel
    differently (transparent pixels are paper). `grey`: one channel, as the Draw view sends its
    drawings (static/png.js), the same pictures."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for i in range(n):
        digit = i % 10
        angle, scale = math.radians(rng.uniform(-8, 8)), rng.uniform(0.8, 1.1)
        dx, dy = rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)
        image = Image.new("RGBA", (size, size), "white")
        draw = ImageDraw.Draw(image)
        for stroke in DIGITS[digit]:
            points = []
            for x, y in stroke:
                x, y = (x - 0.5) * scale, (y - 0.5) * scale
                x, y = x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)
                points.append(((x + 0.5 + dx) * size, (y + 0.5 + dy) * size))
            draw.line(points, fill="black", width=round(0.075 * size), joint="curve")
        buffer = io.BytesIO()
        (image.convert("L") if grey else image).save(buffer, format="PNG")
        out.append((digit, buffer.getvalue()))
    return out


def tree(pid: int) -> list[int]:
    """`pid` and its descendants in its session (the server's worker processes, not the training jobs the
    page started: each has a session of its own), from Linux /proc."""
    children: dict[int, list[int]] = {}
    sessions: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        sessions[int(stat.parent.name)] = int(fields[3])
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    children = {parent: [c for c in kids if sessions.get(c) == sessions.get(pid)] for parent, kids in children.items()}
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def memory_mb(pid: int) -> dict[str, float]:
    """The server's memory in MiB over all its processes: proportional set size (pages shared by
    forked workers counted once in all), and the largest peak resident size of one process."""
    pss, peak = 0.0, 0.0
    for p in tree(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        pss += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M).group(1)) / 1024
        peak = max(peak, int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024)
    return {"pss": pss, "peak": peak}


def usage(pid: int) -> tuple[float, float, int]:
    """User and system CPU seconds, and minor page faults, of the process and its descendants so far
    (Linux /proc). A fault is the kernel handing a page of fresh memory to the process: its cost is
    system time, and counting them shows memory freed to the system and asked for again."""
    user = system = 0.0
    faults = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        faults += int(fields[7])  # minflt
        user += int(fields[11]) / os.sysconf("SC_CLK_TCK")
        system += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return user, system, faults


def start_server(model: str, processes: int | None, *more: str) -> tuple[subprocess.Popen, str]:
    flags = ["--processes", str(processes)] if processes else []
    flags += more
    process = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", model, "--port", "0", *flags],
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
             deadline: float, content_type: str = "image/png", pause: float = 0.0) -> dict:
    """`pause`: seconds each client waits after an answer before its next request (0: at once)."""
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
            if pause:
                time.sleep(pause)
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


# ---------------------------------------------------------------------------
# Clients that hold on, and a training run alongside


def huge_png() -> bytes:
    """An 88-megapixel PNG (one bit per pixel, a stroke on white) of tens of kilobytes."""
    from PIL import Image, ImageDraw

    image = Image.new("1", (9380, 9380), 1)
    ImageDraw.Draw(image).line([(2800, 1900), (6500, 1900), (4200, 8000)], fill=0, width=470)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Adversaries:
    """Idle sockets, slowloris clients (headers, bodies), 100 MB headers and 88 MP PNGs, in threads,
    each reconnecting as soon as the server cuts it off, until stopped. Counts how they were cut off."""

    def __init__(self, port: int, idle: int = 1000, slow_headers: int = 20, slow_bodies: int = 20,
                 huge_headers: int = 2, huge_pictures: int = 2):
        self.port = port
        self.counts = {"idle": idle, "slow_headers": slow_headers, "slow_bodies": slow_bodies,
                       "huge_headers": huge_headers, "huge_pictures": huge_pictures}
        self.cut_off = {name: 0 for name in self.counts}
        self.answers: dict[str, int] = {}
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.picture = huge_png()

    def __enter__(self) -> Adversaries:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))
        for kind, count in self.counts.items():
            for _ in range(count if kind != "idle" else 1):
                thread = threading.Thread(target=getattr(self, kind), daemon=True)
                thread.start()
                self.threads.append(thread)
        time.sleep(2)  # all connected before the normal clients start
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(15)

    def _connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)

    def _ended(self, kind: str, sock: socket.socket) -> None:
        """Record how the server ended this connection (its status line, or a close without a word)."""
        try:
            sock.settimeout(5)
            first = sock.recv(64).split(b"\r\n", 1)[0].decode("latin-1") or "closed"
        except OSError:
            first = "reset"
        with self.lock:
            self.cut_off[kind] += 1
            self.answers[f"{kind}: {first}"] = self.answers.get(f"{kind}: {first}", 0) + 1
        sock.close()

    def idle(self) -> None:
        """Keeps `idle` silent sockets open, replacing each the server closes."""
        sockets = []
        while not self.stopping.is_set():
            while len(sockets) < self.counts["idle"] and not self.stopping.is_set():
                try:
                    sockets.append(self._connect())
                except OSError:
                    time.sleep(0.1)
                    break
            time.sleep(0.5)
            still = []
            for s in sockets:
                s.setblocking(False)
                try:
                    closed = s.recv(1) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    with self.lock:
                        self.cut_off["idle"] += 1
                    s.close()
                else:
                    still.append(s)
            sockets = still
        for s in sockets:
            s.close()

    def _dribble(self, kind: str, head: bytes, piece: bytes) -> None:
        while not self.stopping.is_set():
            try:
                sock = self._connect()
                sock.sendall(head)
                while not self.stopping.is_set():
                    sock.sendall(piece)
                    time.sleep(0.5)
            except OSError:
                pass
            if self.stopping.is_set():
                return
            self._ended(kind, sock)

    def slow_headers(self) -> None:
        self._dribble("slow_headers", b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-a: b\r\n")

    def slow_bodies(self) -> None:
        self._dribble("slow_bodies", b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: image/png\r\nContent-Length: 1000000\r\n\r\n", b"x")

    def huge_headers(self) -> None:
        while not self.stopping.is_set():
            try:
                sock = self._connect()
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
                for _ in range(1600):  # 100 MiB
                    sock.sendall(b"a" * 65536)
            except OSError:
                pass
            self._ended("huge_headers", sock)

    def huge_pictures(self) -> None:
        while not self.stopping.is_set():
            try:
                sock = self._connect()
                sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(self.picture), self.picture))
            except OSError:
                pass
            self._ended("huge_pictures", sock)


class Training:
    """`python -m mnistlab train --recipe seed` on real MNIST in a temporary folder, alongside the load."""

    def __init__(self, data_dir: str):
        self.data_dir = data_dir
        self.lines: list[str] = []

    def __enter__(self) -> Training:
        self.folder = tempfile.mkdtemp(prefix="serve-load-train-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mnistlab", "train", "--recipe", "seed", "--epochs", "100", "--data-dir",
             self.data_dir, "--out", str(Path(self.folder) / "run"), "--no-plots"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 300
        while len(self._epochs()) < 3 and time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"serve_load: the training run ended: {''.join(self.lines)[-500:]}")
            time.sleep(0.2)  # three epochs without the load: its speed alone
        self.started = len(self._epochs())
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def _epochs(self) -> list[float]:
        """Seconds of each epoch finished so far, from the `epoch k/n ... 0.42s` lines."""
        return [float(m.group(1)) for m in (re.search(r"^epoch\s+\d+/\d+ .* ([\d.]+)s$", line.strip())
                                            for line in self.lines) if m]

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.reader.join(5)
        shutil.rmtree(self.folder, ignore_errors=True)

    def summary(self) -> dict:
        epochs = self._epochs()
        during = epochs[self.started:]
        alone = epochs[:self.started]
        return {"epochs_before_load": self.started, "epochs_during_load": len(during),
                "median_epoch_seconds_before_load": sorted(alone)[len(alone) // 2] if alone else None,
                "median_epoch_seconds_during_load": sorted(during)[len(during) // 2] if during else None}


class PageTraining:
    """The seed recipe on real MNIST started as the page starts it (POST /api/runs) and followed through the
    API, alongside the load; stopped with DELETE /api/runs/NAME."""

    def __init__(self, url: str):
        self.url = url
        self.rows: list[dict] = []

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        parts = urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None,
                               headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            data = json.loads(answer.read())
        finally:
            connection.close()
        if answer.status >= 400:
            sys.exit(f"serve_load: {method} {path}: {answer.status} {data.get('error')}")
        return data

    def __enter__(self) -> PageTraining:
        self.name = self._call("POST", "/api/runs", {"recipe": "seed", "epochs": 100})["runs"][0]
        deadline = time.monotonic() + 300
        while len(self._rows()) < 3 and time.monotonic() < deadline:  # three epochs without the load
            time.sleep(0.5)
        self.started = len(self.rows)
        return self

    def _rows(self) -> list[dict]:
        run = self._call("GET", f"/api/runs/{self.name}")
        if run["state"] not in ("queued", "starting", "running"):
            sys.exit(f"serve_load: the training run ended: {run['state']} {run.get('problem')}")
        self.rows = run["rows"]
        return self.rows

    def __exit__(self, *exc) -> None:
        self._rows()
        self._call("DELETE", f"/api/runs/{self.name}")

    def summary(self) -> dict:
        alone = sorted(r["seconds"] for r in self.rows[:self.started])
        during = sorted(r["seconds"] for r in self.rows[self.started:])
        return {"epochs_before_load": self.started, "epochs_during_load": len(during),
                "median_epoch_seconds_before_load": alone[len(alone) // 2] if alone else None,
                "median_epoch_seconds_during_load": during[len(during) // 2] if during else None}


def machine() -> str:
    cpu = platform.processor()
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M).group(1)
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"


def measure(process: subprocess.Popen | None, url: str, images, args, query: str, content_type: str) -> dict:
    """One load of --requests requests, with the server's and the clients' CPU time per request."""
    before, client_cpu = usage(process.pid) if process else (math.nan,) * 3, time.process_time()
    result = run_load(url, images, args.requests, args.clients, query, time.perf_counter() + args.max_seconds,
                      content_type, args.pause / 1000)
    client_cpu = time.process_time() - client_cpu
    user, system, faults = (a - b for a, b in zip(usage(process.pid), before)) if process else (math.nan,) * 3
    n = max(1, result["requests"])
    result.update(server_cpu_ms_per_request=1000 * (user + system) / n, server_user_ms_per_request=1000 * user / n,
                  server_system_ms_per_request=1000 * system / n, server_page_faults_per_request=faults / n,
                  client_cpu_ms_per_request=1000 * client_cpu / n, load_average=os.getloadavg()[0])
    return result


def show(name: str, result: dict) -> None:
    print(f"{name}: {result['ok']} answers, errors {result['errors']}"
          + (f" (first: {result['first_errors']})" if result["errors"] else ""))
    print(f"  throughput {result['requests_per_second']:.1f} requests/s over {result['seconds']:.1f} s; latency "
          f"p50 {result['p50_ms']:.1f} ms  p90 {result['p90_ms']:.1f} ms  p99 {result['p99_ms']:.1f} ms  "
          f"max {result['max_ms']:.1f} ms")
    print(f"  CPU per request: server {result['server_cpu_ms_per_request']:.2f} ms (user "
          f"{result['server_user_ms_per_request']:.2f}, system {result['server_system_ms_per_request']:.2f}; "
          f"{result['server_page_faults_per_request']:.0f} page faults), clients "
          f"{result['client_cpu_ms_per_request']:.2f} ms (load average {result['load_average']:.1f}); "
          f"answers matching the drawn digit: {result['right']}/{result['ok']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="run directory or checkpoint to serve (not with --url)")
    parser.add_argument("--url", help="a server already running on this machine, e.g. http://127.0.0.1:8000/")
    parser.add_argument("--requests", type=int, default=5000, help="requests in all, per phase (default: 5000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: 8)")
    parser.add_argument("--size", type=int, default=280, help="canvas side in pixels (default: 280)")
    parser.add_argument("--images", type=int, default=50, help="distinct drawings, posted in turn (default: 50)")
    parser.add_argument("--activations", action="store_true", help="ask for the hidden layers too, as the page does")
    parser.add_argument("--pause", type=float, default=0.0, metavar="MS",
                        help="each client waits this long after an answer before its next request: 120 is the "
                        "page's pace while a stroke is drawn (default: 0, at once)")
    parser.add_argument("--body", choices=["png", "grey-png", "array"], default="png",
                        help="png: canvas PNGs as a browser exports them, RGBA (default); grey-png: the same "
                        "canvases as one-channel PNGs, as the Draw view sends them; array: the same drawings as prepared 28x28 JSON arrays, "
                        "to measure everything but the image preparation")
    parser.add_argument("--processes", type=int, help="the server's --processes (default: its own default)")
    parser.add_argument("--adversaries", action="store_true",
                        help="measure alone, beside idle, slow and oversized clients, and alone again")
    parser.add_argument("--train", metavar="DATA_DIR",
                        help="measure alone, beside a seed-recipe training run on the MNIST in DATA_DIR, and alone again")
    parser.add_argument("--train-from-page", metavar="DATA_DIR",
                        help="as --train, the run started from the page's API on a server of a folder holding RUN")
    parser.add_argument("--max-seconds", type=float, default=1200, help="stop a phase after this long (default: 1200)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if (args.model is None) == (args.url is None):
        parser.error("give a model to serve, or --url of a running server")
    host = urlsplit(args.url).hostname if args.url else "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url must be on this machine (127.0.0.1, localhost or ::1)")
    if sum(map(bool, (args.adversaries, args.train, args.train_from_page))) > 1:
        parser.error("--adversaries, --train or --train-from-page, one at a time")
    served = None
    if args.train_from_page:
        if not args.model or not (Path(args.model) / "config.json").is_file():
            parser.error("--train-from-page needs a run directory to serve (it is copied into a folder of runs)")
        served = tempfile.mkdtemp(prefix="serve-load-page-")
        shutil.copytree(args.model, Path(served) / Path(args.model).resolve().name)

    images = drawings(args.images, args.size, grey=args.body == "grey-png")
    content_type = "image/png"
    if args.body == "array":
        images, content_type = as_arrays(images), "application/json"
    model_query = ""
    if served:  # the model named in every request, not the run training beside it
        process, url = start_server(served, args.processes, "--data-dir", args.train_from_page, "--max-epochs", "100")
        model_query = f"model={Path(args.model).resolve().name}"
    else:
        process, url = start_server(args.model, args.processes) if args.model else (None, args.url)
    phases: dict[str, dict] = {}
    extra: dict = {}
    try:
        before = memory_mb(process.pid) if process else None
        query = "&".join(filter(None, ("activations=1" if args.activations else "", model_query)))
        query = f"?{query}" if query else ""
        warm = run_load(url, images, min(20, args.requests), 2, query, time.perf_counter() + 120, content_type)
        if warm["errors"]:
            sys.exit(f"serve_load: warm-up failed: {warm['first_errors']}")
        if args.adversaries or args.train or args.train_from_page:
            phases["alone"] = measure(process, url, images, args, query, content_type)
            if args.adversaries:
                with Adversaries(urlsplit(url).port) as adversaries:
                    phases["beside adversaries"] = measure(process, url, images, args, query, content_type)
                extra["adversaries"] = {"clients": adversaries.counts, "cut_off": adversaries.cut_off,
                                        "how": adversaries.answers}
            else:
                with Training(args.train) if args.train else PageTraining(url) as training:
                    phases["beside training"] = measure(process, url, images, args, query, content_type)
                extra["training"] = training.summary()
            phases["alone again"] = measure(process, url, images, args, query, content_type)
        else:
            phases["load"] = measure(process, url, images, args, query, content_type)
        after = memory_mb(process.pid) if process else None
    finally:
        if process:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if served:
            shutil.rmtree(served, ignore_errors=True)
    result = {"machine": machine(), "clients": args.clients, "pause_ms": args.pause, "size": args.size,
              "activations": args.activations,
              "body": args.body, "body_bytes": sum(len(b) for _, b in images) / len(images),
              "memory_before_mb": before, "memory_after_mb": after, "phases": phases, **extra}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"machine: {result['machine']}")
        what = (f"{args.size}x{args.size} canvas PNGs" + (" (grey)" if args.body == "grey-png" else "")
                if args.body != "array"
                else f"prepared 28x28 JSON arrays (from {args.size}x{args.size} canvases)")
        print(f"{args.requests} requests per phase of {what} (mean {result['body_bytes'] / 1024:.1f} KiB) from "
              f"{args.clients} clients" + (", with activations" if args.activations else "")
              + (f", each pausing {args.pause:g} ms after an answer" if args.pause else ""))
        for name, phase in phases.items():
            show(name, phase)
        if "adversaries" in extra:
            print(f"adversaries: {extra['adversaries']['clients']}; cut off by the server: "
                  f"{extra['adversaries']['cut_off']}; how: {extra['adversaries']['how']}")
        if "training" in extra:
            print(f"training (seed recipe): {extra['training']}")
        if before:
            print(f"server memory (all processes, PSS): {before['pss']:.0f} MiB before, {after['pss']:.0f} MiB "
                  f"after (largest peak RSS of one process {after['peak']:.0f} MiB)")
    failed = any(phase["errors"] or phase["requests"] < args.requests for phase in phases.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
