"""`mnistlab serve` against clients that hold on: idle and slow connections, oversized headers, too
many connections, hostile Host headers, missing tokens, huge pictures, Ctrl-C at any instant.

The connection limits are tested on uvicorn with the guarded protocol in a thread of this process,
with short timeouts; the real command (processes, signals, 1,000 idle sockets) in slow tests."""

from __future__ import annotations

import io
import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("fastapi", reason="mnistlab serve needs the serve extra: pip install -e '.[serve]'")
uvicorn = pytest.importorskip("uvicorn")
from fastapi.testclient import TestClient  # noqa: E402

from mnistlab.base.prepare import MAX_PIXELS  # noqa: E402
from mnistlab.cli import main  # noqa: E402
from mnistlab.commands.serve import create_app, load_models  # noqa: E402
from mnistlab.commands.server import AllowedHosts, Limits, guarded_protocol  # noqa: E402

LIMITS = Limits(idle_timeout=0.6, head_timeout=0.6, body_timeout=0.6, max_head=4096, max_connections=8)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def seven(size: int = 112) -> bytes:
    image = Image.new("RGB", (size, size), "white")
    s = size / 280
    ImageDraw.Draw(image).line([(80 * s, 60 * s), (200 * s, 60 * s), (120 * s, 230 * s)], fill="black",
                               width=round(21 * s), joint="curve")
    return png(image)


def request(port: int, path: str = "/api/health", body: bytes | None = None, headers: dict | None = None,
            host: str = "127.0.0.1") -> tuple[int, dict, bytes]:
    """One HTTP request on a new connection: (status, headers, body)."""
    import http.client

    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("POST" if body is not None else "GET", path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def answer(sock: socket.socket, timeout: float = 5) -> bytes:
    """Everything the server sends on `sock` until it closes it (b"" if it closes without a word)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def dribble(sock: socket.socket, piece: bytes, times: int = 20) -> None:
    """Send `piece` every 0.1 s until the server closes the connection (or `times` pieces are sent)."""
    for _ in range(times):
        try:
            sock.sendall(piece)
        except OSError:
            return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tiny_run):
    return load_models([tiny_run])


@pytest.fixture(scope="module")
def guarded(served):
    """uvicorn with the guarded protocol and LIMITS, in a thread; its port."""
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(served, workers=0, hosts=AllowedHosts()), log_level="error",
                            http=guarded_protocol(LIMITS), timeout_keep_alive=LIMITS.idle_timeout)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    port = sock.getsockname()[1]
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield port
    server.should_exit = True
    thread.join(10)


# ---------------------------------------------------------------------------
# Connections that hold on


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(guarded):
    with socket.create_connection(("127.0.0.1", guarded)) as idle:
        t0 = time.monotonic()
        assert answer(idle) == b""  # closed without a word
        assert LIMITS.idle_timeout - 0.1 < time.monotonic() - t0 < LIMITS.idle_timeout + 2


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(guarded):
    with socket.create_connection(("127.0.0.1", guarded)) as kept:
        kept.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = answer(kept)
    assert data.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in data  # answered, then closed


def test_headers_dribbled_slowly_get_408_at_the_head_timeout(guarded):
    with socket.create_connection(("127.0.0.1", guarded)) as slow:
        t0 = time.monotonic()
        slow.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        dribble(slow, b"X-Slow: a\r\n")  # never the blank line that ends the headers
        data = answer(slow)
    assert data.startswith(b"HTTP/1.1 408")
    assert "headers did not arrive within 0.6 s" in json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]
    assert time.monotonic() - t0 < LIMITS.head_timeout + 2


def test_a_body_dribbled_slowly_is_cut_off_with_408(guarded):
    with socket.create_connection(("127.0.0.1", guarded)) as slow:
        slow.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        dribble(slow, b"x")
        data = answer(slow)
    assert data.startswith(b"HTTP/1.1 408")
    assert "body did not arrive" in json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]


def test_an_unfinished_header_of_many_megabytes_gets_431_after_a_few_kilobytes(guarded):
    with socket.create_connection(("127.0.0.1", guarded)) as big:
        big.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        sent = 0
        try:
            for _ in range(100 * 16):  # up to 100 MiB, in 64 KiB pieces: the server cuts it off first
                big.sendall(b"a" * 65536)
                sent += 65536
        except OSError:  # the server closed the connection while we were still sending
            pass
        data = answer(big)
    assert sent < 8 * 1024 * 1024  # refused long before the end
    assert data == b"" or data.startswith(b"HTTP/1.1 431")  # the answer may be lost to the reset


def test_a_request_after_a_431_on_another_connection_is_served(guarded):
    with socket.create_connection(("127.0.0.1", guarded)) as big:
        big.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        assert answer(big).startswith(b"HTTP/1.1 431")
    assert request(guarded)[0] == 200


def test_beyond_the_connection_limit_the_longest_waiting_connection_makes_room(guarded):
    held = [socket.create_connection(("127.0.0.1", guarded)) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.1)
        status, _, body = request(guarded, "/api/predict", seven(), {"Content-Type": "image/png"})
        assert status == 200 and json.loads(body)["prediction"] in range(10)
        held[0].settimeout(0.2)  # the oldest was closed to let it in
        assert held[0].recv(10) == b""
    finally:
        for s in held:
            s.close()


# ---------------------------------------------------------------------------
# Who may ask


def test_a_host_header_that_is_not_this_server_is_refused(served):
    with TestClient(create_app(served, hosts=AllowedHosts()), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/health").status_code == 200
        for host in ["localhost:8000", "[::1]:8000", "app.localhost"]:
            assert c.get("/api/health", headers={"Host": host}).status_code == 200
        r = c.get("/api/health", headers={"Host": "attacker.example:8000"})
        assert r.status_code == 400 and "'attacker.example:8000' is not a name of this server" in r.json()["error"]
        assert c.get("/", headers={"Host": "attacker.example"}).status_code == 400  # the page too
    with TestClient(create_app(served, hosts=AllowedHosts(["lab.example.org"])),
                    base_url="http://lab.example.org") as c:
        assert c.get("/api/health").status_code == 200


def test_with_a_token_every_api_call_needs_it_and_the_page_keeps_it_in_a_cookie(served):
    app = create_app(served, hosts=AllowedHosts(), token="s3cret-token")
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        for path in ["/api/health", "/api/models", "/openapi.json"]:
            r = c.get(path)
            assert r.status_code == 401 and "needs its token" in r.json()["error"], path
            assert "\n" not in r.json()["error"]
        assert c.post("/api/predict", content=seven(), headers={"Content-Type": "image/png"}).status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert c.get("/api/health?token=wrong-token").status_code == 401
        # the page itself needs no token: it says what to do when the API refuses
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200

        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert c.get("/api/health?token=s3cret-token").status_code == 200
        r = c.get("/?token=s3cret-token", follow_redirects=False)  # the address mnistlab serve prints
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/api/health").status_code == 200  # the cookie now carries it
        r = c.post("/api/predict", content=seven(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["prediction"] in range(10)


def test_without_a_token_loopback_serving_asks_for_none(served):
    with TestClient(create_app(served, hosts=AllowedHosts()), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/health").status_code == 200


# ---------------------------------------------------------------------------
# What a request may cost


def huge_png() -> bytes:
    """An 88-megapixel PNG (9380x9380, one bit per pixel, a stroke on white): tens of kilobytes."""
    image = Image.new("1", (9380, 9380), 1)
    ImageDraw.Draw(image).line([(2800, 1900), (6500, 1900), (4200, 8000)], fill=0, width=470)
    return png(image)


def test_a_picture_of_more_pixels_than_the_limit_is_refused_before_decoding(served, tmp_path, capsys):
    data = huge_png()
    assert len(data) < 2 * 1024 * 1024 and 9380 * 9380 > MAX_PIXELS
    with TestClient(create_app(served)) as c:
        t0 = time.process_time()
        r = c.post("/api/predict", content=data, headers={"Content-Type": "image/png"})
        cpu = time.process_time() - t0
    assert r.status_code == 413
    assert "9380x9380 pixels (88.0 megapixels), more than the limit of 25" in r.json()["error"]
    assert cpu < 0.5  # decoding it would take seconds
    (tmp_path / "huge.png").write_bytes(data)
    capsys.readouterr()
    assert main(["predict", str(served[0].checkpoint.path), str(tmp_path / "huge.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "huge.png: too large to decode: 9380x9380 pixels" in err and len(err.splitlines()) == 1


def test_a_phone_sized_picture_under_the_limit_is_classified(served):
    photo = Image.new("L", (5712, 4284), 200)  # a 24-megapixel phone photo's size
    ImageDraw.Draw(photo).line([(1700, 900), (4000, 900), (2600, 3700)], fill=30, width=250)
    with TestClient(create_app(served)) as c:
        r = c.post("/api/predict", content=png(photo), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("ink", [0.4, 1, 23])
def test_an_array_whose_ink_is_too_faint_to_see_is_refused_like_a_blank_one(served, ink):
    image = np.zeros((28, 28))
    image[8:20, 13:15] = ink
    with TestClient(create_app(served)) as c:
        r = c.post("/api/predict", json={"image": image.tolist()})
    assert r.status_code == 422 and "no ink found" in r.json()["error"]
    assert f"brightest value of the array is {ink:g}" in r.json()["error"]


# ---------------------------------------------------------------------------
# The real command


def start(tiny_run: Path, *flags: str) -> tuple[subprocess.Popen, list[str]]:
    server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(tiny_run), "--port", "0", *flags],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [server.stdout.readline() for _ in range(2)]
    return server, lines


def stop(server: subprocess.Popen) -> str:
    server.send_signal(signal.SIGINT)
    _, err = server.communicate(timeout=30)
    assert server.returncode == 0 and "Traceback" not in err and "stopped" in err, err
    return err


def port_of(lines: list[str]) -> int:
    return int(re.search(r"http://127\.0\.0\.1:(\d+)/", "".join(lines)).group(1))


@pytest.mark.slow
def test_ctrl_c_stops_the_server_at_any_instant_of_its_start(tiny_run):
    for delay in [0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]:  # after it printed its address
        server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(tiny_run), "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while (line := server.stdout.readline()) and "open http" not in line:
                pass
            time.sleep(delay)
            server.send_signal(signal.SIGINT)
            _, err = server.communicate(timeout=30)
        finally:
            server.kill()
        assert server.returncode == 0, (delay, err)
        assert err.strip() == "stopped", (delay, err)
    for delay in [0.2, 0.6, 1.0]:  # while it imports and loads the models
        server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(tiny_run), "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=30)
        finally:
            server.kill()
        # 0: stopped while loading; 130 (or killed by the SIGINT itself: -2, as on main) while importing
        assert server.returncode in (0, 130, -2) and "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.slow
def test_a_thousand_idle_sockets_neither_lock_out_nor_slow_down_a_normal_client(tiny_run):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4096), hard), hard))
    server, lines = start(tiny_run)
    idle = []
    try:
        port = port_of(lines)
        body = seven()
        assert request(port, "/api/predict", body, {"Content-Type": "image/png"})[0] == 200
        for _ in range(1000):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        t0 = time.monotonic()
        for _ in range(20):
            status, _, data = request(port, "/api/predict", body, {"Content-Type": "image/png"})
            assert status == 200 and json.loads(data)["model"] == "tiny"
        assert time.monotonic() - t0 < 20  # 20 answers while 1,000 sockets sit idle (about 0.1 s alone)
        time.sleep(Limits().idle_timeout + 2)
        closed = 0
        for s in idle:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed == 1000  # every idle socket was let go
    finally:
        for s in idle:
            s.close()
        stop(server)


@pytest.mark.slow
def test_the_real_server_refuses_a_bad_host_and_a_huge_header_and_stays_small(tiny_run):
    server, lines = start(tiny_run, "--processes", "1")
    try:
        port = port_of(lines)
        status, _, body = request(port, headers={"Host": "rebound.example"})
        assert status == 400 and "rebound.example" in json.loads(body)["error"]
        pids = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        rss = [int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) for pid in pids]
        for _ in range(4):  # 100 MB of header each, never finished: refused after 32 KiB
            with socket.create_connection(("127.0.0.1", port)) as big:
                big.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
                with pytest.raises(OSError):
                    for _ in range(1600):
                        big.sendall(b"a" * 65536)
        after = [int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) for pid in pids]
        assert max(a - b for a, b in zip(after, rss)) < 20 * 1024  # kB: not the 120 MB per connection of before
        assert request(port)[0] == 200
    finally:
        stop(server)


@pytest.mark.slow
def test_serving_to_the_network_prints_a_token_address_and_refuses_calls_without_it(tiny_run):
    server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(tiny_run), "--port", "0",
                               "--host", "0.0.0.0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [server.stdout.readline() for _ in range(4)]
        url = re.search(r"open (http://127\.0\.0\.1:\d+/\?token=([A-Za-z0-9_-]{12}))", lines[1])
        assert url, lines
        assert "from other machines: http://" in lines[2] and url.group(2) in lines[2]
        assert "every API call needs this token" in lines[3]
        port = port_of(lines)
        status, _, body = request(port)
        assert status == 401 and "needs its token" in json.loads(body)["error"]
        assert request(port, f"/api/health?token={url.group(2)}")[0] == 200
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(url.group(1), timeout=10) as page:  # redirected to / with the cookie
            assert page.url.endswith(f":{port}/") and b"<canvas" in page.read()
        with opener.open(f"http://127.0.0.1:{port}/api/health", timeout=10) as health:
            assert json.loads(health.read())["status"] == "ok"
    finally:
        stop(server)
