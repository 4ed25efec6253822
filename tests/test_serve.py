"""`mnistlab serve`: the API in process (every endpoint, every kind of bad input), the page's files,
and the command line. (The fuzz from the OpenAPI document: test_serve_fuzz.py; the page in a real
browser: test_browser.py.)"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

pytest.importorskip("fastapi", reason="mnistlab serve needs the serve extra: pip install -e '.[serve]'")
anyio = pytest.importorskip("anyio")
from conftest import fake_digits  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from mnistlab.core.checkpoint import save_checkpoint  # noqa: E402
from mnistlab.cli import main  # noqa: E402
from mnistlab.base.models import architecture, build_model  # noqa: E402
from mnistlab.commands.prediction import predict_array  # noqa: E402
from mnistlab.base.prepare import load_image, prepare_image  # noqa: E402
from mnistlab.commands.serve import (  # noqa: E402
    create_app,
    is_loopback,
    listen,
    load_models,
    model_names,
    page_url,
)

# ---------------------------------------------------------------------------
# Helpers


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def canvas_seven(size: int = 112) -> Image.Image:
    """What the page sends: dark strokes on explicitly painted white paper."""
    image = Image.new("RGB", (size, size), "white")
    s = size / 280
    ImageDraw.Draw(image).line([(80 * s, 60 * s), (200 * s, 60 * s), (120 * s, 230 * s)], fill="black",
                               width=round(21 * s), joint="curve")
    return image


def post(client, body: bytes, content_type: str | None = "image/png", query: str = "", **kwargs):
    headers = {"Content-Type": content_type} if content_type else {}
    return client.post(f"/api/predict{query}", content=body, headers=headers, **kwargs)


def error_of(response, status: int) -> str:
    """The one-line error of a response that must have `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    return body["error"]


def asgi_post(app, path: str, chunks: list, headers: dict[str, str]):
    """POST through the raw ASGI interface, so that the body can stall (None: wait forever) or be cut off
    ("cut": the client disconnects). Returns a coroutine function giving (status, JSON body)."""
    pending = list(chunks)

    async def receive():
        chunk = pending.pop(0) if pending else "cut"
        if chunk is None:
            await anyio.sleep(3600)
        if chunk == "cut":
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}

    async def call():
        await app(scope, receive, send)
        return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    return call


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def served(tiny_run):
    return load_models([tiny_run])


@pytest.fixture(scope="module")
def client(served):
    with TestClient(create_app(served)) as c:
        yield c


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """An untrained CNN saved as a checkpoint: enough to check what the server shows of it."""
    folder = tmp_path_factory.mktemp("runs") / "cnn-mnist"
    torch.manual_seed(0)
    arch = architecture("cnn", (1, 28, 28), 10)
    model = build_model(arch).eval()
    save_checkpoint(folder, model.state_dict(), {"architecture": arch, "dataset": "mnist", "classes": list("0123456789"),
                                    "normalization": {"mean": 0.5, "std": 0.5}, "metrics": {}})
    return folder


# ---------------------------------------------------------------------------
# The endpoints


def test_health_answers_ok_with_the_limits(client):
    r = client.get("/api/health")
    assert r.status_code == 200
    health = r.json()
    assert health["status"] == "ok" and health["models"] == 1 and health["in_flight"] == 0
    assert health["workers"] >= 1 and health["max_upload_bytes"] == 2 * 1024 * 1024


def test_models_lists_each_model_with_its_dataset_classes_and_accuracy(client, tiny_run):
    r = client.get("/api/models")
    assert r.status_code == 200
    listing = r.json()
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert listing["default"] == "tiny"
    assert listing["models"] == [{"name": "tiny", "dataset": "mnist", "model": "mlp",
                                  "classes": [str(d) for d in range(10)],
                                  "test_accuracy": summary["test_accuracy"]}]


def test_one_model_gives_architecture_dataset_classes_metrics_and_hidden_layers(client, tiny_run):
    r = client.get("/api/models/tiny")
    assert r.status_code == 200
    info = r.json()
    meta = json.loads((tiny_run / "model.json").read_text())
    assert info["architecture"] == meta["architecture"]
    assert info["dataset"] == "mnist" and info["classes"] == meta["classes"]
    assert info["normalization"] == meta["normalization"]
    assert info["metrics"]["test_accuracy"] == meta["metrics"]["test_accuracy"]
    assert info["metrics"]["epochs"] == 2
    assert info["parameters"] == 784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert info["hidden_layers"] == [{"name": "hidden 1", "description": "Linear(784, 128) + ReLU"},
                                     {"name": "hidden 2", "description": "Linear(128, 64) + ReLU"}]


def test_an_unknown_model_is_404_naming_the_models_there_are(client):
    assert "tiny" in error_of(client.get("/api/models/nope"), 404)
    assert "no model named 'nope'" in error_of(post(client, png(canvas_seven()), query="?model=nope"), 404)


def test_an_uploaded_canvas_gets_exactly_the_answer_of_mnistlab_predict(client, served, tiny_run, tmp_path,
                                                                         capsys):
    picture = tmp_path / "seven.png"
    canvas_seven(280).save(picture)  # the page's size
    r = post(client, picture.read_bytes())
    assert r.status_code == 200, r.text
    answer = r.json()

    assert main(["predict", str(tiny_run), str(picture), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert answer["probabilities"] == cli["probabilities"]
    assert (answer["prediction"], answer["label"]) == (cli["prediction"], cli["label"])
    assert answer["model"] == "tiny" and answer["activations"] is None
    # the 28x28 image shown on the page is the one the CLI's preparation makes
    assert np.array_equal(np.array(answer["prepared"], dtype=np.uint8), prepare_image(load_image(picture)))
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream", "image/x-anything"])
def test_the_raw_body_may_be_any_image_format_whatever_its_declared_image_type(client, content_type):
    buffer = io.BytesIO()
    canvas_seven().save(buffer, format="JPEG", quality=95)
    r = post(client, buffer.getvalue(), content_type)
    assert r.status_code == 200, r.text
    assert len(r.json()["probabilities"]) == 10


def test_a_transparent_canvas_export_is_read_as_ink_on_paper(client):
    transparent = Image.new("RGBA", (112, 112), (0, 0, 0, 0))
    ImageDraw.Draw(transparent).line([(32, 24), (80, 24), (48, 92)], fill=(0, 0, 0, 255), width=8, joint="curve")
    on_paper = post(client, png(canvas_seven())).json()["prepared"]
    assert post(client, png(transparent)).json()["prepared"] == on_paper


def test_a_multipart_upload_is_read_from_its_image_field_or_its_only_file(client):
    data = png(canvas_seven())
    expected = post(client, data).json()
    r = client.post("/api/predict", files={"image": ("seven.png", data, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["probabilities"] == expected["probabilities"]
    r = client.post("/api/predict", files={"file": ("seven.png", data, "image/png")}, data={"note": "x"})
    assert r.status_code == 200 and r.json()["probabilities"] == expected["probabilities"]


def test_a_json_array_goes_to_the_network_as_it_is(client, served):
    images, labels = fake_digits(10, seed=5)
    checkpoint = served[0].checkpoint
    right = 0
    for image, label in zip(images, labels):
        r = client.post("/api/predict", json={"image": image.tolist()})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["prepared"] == image.tolist()
        assert answer["probabilities"] == predict_array(checkpoint, image).tolist()
        right += answer["prediction"] == label
    assert right >= 8  # the tiny model learnt its blocks


def test_a_json_array_is_prepared_like_a_picture_when_asked(client):
    drawing = np.zeros((28, 28), np.uint8)
    drawing[4:22, 12:15] = 255  # a bar, off-centre
    answer = client.post("/api/predict", json={"image": drawing.tolist(), "prepare": True}).json()
    assert np.array_equal(np.array(answer["prepared"], dtype=np.uint8), prepare_image(drawing))


def test_activations_are_the_hidden_layers_outputs_and_only_sent_when_asked(client, served):
    image = fake_digits(1, seed=3)[0][0]
    r = client.post("/api/predict?activations=1", json={"image": image.tolist()})
    assert r.status_code == 200
    layers = r.json()["activations"]
    assert [(layer["name"], layer["shape"]) for layer in layers] == [("hidden 1", [128]), ("hidden 2", [64])]
    # computed here by hand from the checkpoint's own layers and normalisation
    checkpoint = served[0].checkpoint
    x = (torch.tensor(image, dtype=torch.float32).reshape(1, -1) / 255 - checkpoint.mean) / checkpoint.std
    net = checkpoint.model
    with torch.no_grad():
        h1 = torch.relu(net[1](x))
        h2 = torch.relu(net[3](h1))
    assert np.allclose(layers[0]["values"], h1[0].numpy(), atol=1e-4)
    assert np.allclose(layers[1]["values"], h2[0].numpy(), atol=1e-4)
    assert client.post("/api/predict?activations=0", json={"image": image.tolist()}).json()["activations"] is None


def test_a_cnn_shows_the_feature_maps_of_its_first_block(cnn_run):
    with TestClient(create_app(load_models([cnn_run]))) as c:
        assert c.get("/api/models/cnn-mnist").json()["hidden_layers"] == [
            {"name": "hidden 1", "description": "Conv2d(1, 32, 3x3) + BatchNorm + ReLU"}]
        answer = c.post("/api/predict?activations=true", content=png(canvas_seven()),
                        headers={"Content-Type": "image/png"}).json()
    (maps,) = answer["activations"]
    assert maps["shape"] == [32, 28, 28] and len(maps["values"]) == 32 * 28 * 28
    assert min(maps["values"]) >= 0 and max(maps["values"]) > 0  # after the ReLU, and not all quiet


def test_several_models_get_names_from_their_run_folders_made_unique(tmp_path, tiny_run, cnn_run):
    (tmp_path / "a b").mkdir()
    weights = tmp_path / "a b" / "model.safetensors"
    assert model_names([tiny_run, tiny_run, weights, tmp_path / "best.safetensors"]) == [
        "tiny", "tiny-2", "a-b", "best"]
    with TestClient(create_app(load_models([tiny_run, cnn_run, tiny_run]))) as c:
        listing = c.get("/api/models").json()
        assert [m["name"] for m in listing["models"]] == ["tiny", "cnn-mnist", "tiny-2"]
        assert listing["default"] == "tiny"
        data = {"image": fake_digits(1, seed=4)[0][0].tolist()}
        assert c.post("/api/predict", json=data).json()["model"] == "tiny"
        r = c.post("/api/predict?model=cnn-mnist&activations=1", json=data)
        assert r.json()["activations"][0]["shape"] == [32, 28, 28]
        assert c.post("/api/predict?model=tiny-2", json=data).json()["model"] == "tiny-2"


def test_inference_runs_in_worker_threads_with_one_torch_thread_each(tmp_path, tiny_run):
    served = load_models([tiny_run])
    own = torch.get_num_threads()
    seen = []
    served[0].checkpoint.model.register_forward_pre_hook(
        lambda module, args: seen.append((threading.current_thread().name, torch.get_num_threads())))
    with TestClient(create_app(served, workers=2)) as c:
        for image in fake_digits(3, seed=6)[0]:
            assert c.post("/api/predict", json={"image": image.tolist()}).status_code == 200
    assert len(seen) == 3
    assert all(name != threading.main_thread().name and threads == 1 for name, threads in seen), seen
    assert torch.get_num_threads() == own  # set per worker thread, not for the whole process


# ---------------------------------------------------------------------------
# Bad input: always a 4xx with {"error": ...}, and the server goes on


def truncated_png() -> bytes:
    return png(canvas_seven())[:400]


@pytest.mark.parametrize("body, content_type, status, needle", [
    (b"hello, not an image", "image/png", 400, "not an image"),
    (b"\x00" * 100, "application/octet-stream", 400, "not an image"),
    ("truncated", "image/png", 400, "truncated or corrupt"),
    (b"{\"image\": [[1, 2", "application/json", 400, "malformed JSON"),
    (b"[" * 200_000, "application/json", 400, "nested too deeply"),
    (b"{\"image\": [[" + b"9" * 5000 + b"]]}", "application/json", 400, "malformed JSON"),
    (b"{\"image\": \"\xff\"}", "application/json", 400, "malformed JSON"),
    (json.dumps({"image": [0] * 500_000}).encode(), "application/json", 422, "at most 28 items"),
    (b"[1, 2, 3]", "application/json", 422, "body"),
    (json.dumps({"image": [[0] * 28] * 27}).encode(), "application/json", 422, "at least 28 items"),
    (json.dumps({"image": [[0] * 29] * 28}).encode(), "application/json", 422, "image.0: List should have at most 28"),
    (json.dumps({"image": [[0] * 28] * 27 + [[0] * 27 + ["x"]]}).encode(), "application/json", 422,
     "valid number"),
    (b"{\"image\": [" + b",".join([b"[" + b",".join([b"NaN"] * 28) + b"]"] * 28) + b"]}", "application/json",
     422, "finite number"),
    (b"{\"image\": [" + b",".join([b"[" + b",".join([b"Infinity"] * 28) + b"]"] * 28) + b"]}",
     "application/json", 422, "finite number"),
    (json.dumps({"image": [[300] * 28] * 28}).encode(), "application/json", 422, "less than or equal to 255"),
    (json.dumps({"image": [[-1] * 28] * 28}).encode(), "application/json", 422, "greater than or equal to 0"),
    (json.dumps({"image": [[0] * 28] * 28, "colour": 1}).encode(), "application/json", 422, "colour"),
    (json.dumps({"image": [[0] * 28] * 28}).encode(), "application/json", 422, "no ink"),
    (json.dumps({"image": [[9] * 28] * 28, "prepare": True}).encode(), "application/json", 422, "no ink"),
    ("blank", "image/png", 422, "no ink"),
    ("transparent", "image/png", 422, "no ink"),
    (b"", "image/png", 400, "body is empty"),
    (b"abc", "text/plain", 415, "unsupported Content-Type 'text/plain'"),
    (b"abc", "application/x-www-form-urlencoded", 415, "multipart/form-data field 'image'"),
    (b"abc", None, 415, "(none)"),
    (b"--xyz\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--xyz--\r\n",
     "multipart/form-data; boundary=xyz", 422, "no file field 'image'"),
    (b"abc", "multipart/form-data", 400, "malformed multipart"),
])
def test_bad_bodies_get_a_4xx_with_one_line_saying_what_was_wrong(client, body, content_type, status, needle):
    if body == "truncated":
        body = truncated_png()
    elif body == "blank":
        body = png(Image.new("RGB", (112, 112), "white"))
    elif body == "transparent":
        body = png(Image.new("RGBA", (112, 112), (0, 0, 0, 0)))
    assert needle in error_of(post(client, body, content_type), status)
    assert client.get("/api/health").status_code == 200


def png_header(width: int, height: int) -> bytes:
    """A 1-bit PNG of that size whose pixel data is missing: enough for Pillow to read its size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused(client):
    header = png_header(20_000, 20_000)  # 400 megapixels announced in 33 bytes
    assert "decompression bomb" in error_of(post(client, header), 400)


def test_a_body_over_the_limit_is_413_whether_its_length_is_declared_or_not(served):
    with TestClient(create_app(served, max_upload=1000)) as c:
        assert "1001 bytes, more than the limit of 1000" in error_of(post(c, b"x" * 1001), 413)
        # no Content-Length (chunked): counted as it arrives
        assert "--max-upload" in error_of(post(c, iter([b"x" * 600, b"x" * 600])), 413)
        assert error_of(c.post("/api/predict", files={"image": ("a.png", b"x" * 2000, "image/png")}), 413)
        assert post(c, b"x" * 1000).status_code == 400  # at the limit: read, and then found not to be an image
        assert c.get("/api/health").status_code == 200


@pytest.mark.parametrize("query, status, needle", [
    ("?activations=maybe", 422, "activations: Input should be a valid boolean"),
    ("?model=", 404, "no model named ''"),
])
def test_bad_query_parameters_are_4xx(client, query, status, needle):
    assert needle in error_of(post(client, png(canvas_seven()), query=query), status)


def test_unknown_paths_and_methods_get_json_errors_too(client):
    assert "/api/nothing" in error_of(client.get("/api/nothing"), 404)
    assert "GET is not allowed" in error_of(client.get("/api/predict"), 405)
    assert "DELETE is not allowed" in error_of(client.delete("/api/health"), 405)


def test_a_bug_while_classifying_is_a_500_with_one_line_and_the_next_request_is_served(served, monkeypatch):
    import mnistlab.commands.serve as serve

    app = create_app(served)
    with TestClient(app, raise_server_exceptions=False) as c:
        def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        with monkeypatch.context() as m:
            m.setattr(serve, "predict_array_layers", broken)
            r = post(c, png(canvas_seven()))
        assert r.status_code == 500
        assert r.json() == {"error": "internal error (RuntimeError); the server goes on"}
        assert r.headers["x-content-type-options"] == "nosniff"  # Gate's headers on it too
        assert post(c, png(canvas_seven())).status_code == 200


def test_a_slow_body_is_408_a_cut_off_body_400_and_a_bad_length_400(served):
    app = create_app(served, body_timeout=0.2)
    headers = {"content-type": "image/png", "content-length": "5000"}
    t0 = time.monotonic()
    status, body = anyio.run(asgi_post(app, "/api/predict", [b"\x89PNG", None], headers))
    assert status == 408 and "did not arrive within 0.2 s" in body["error"]
    assert time.monotonic() - t0 < 5
    status, body = anyio.run(asgi_post(app, "/api/predict", [b"\x89PNG", "cut"], headers))
    assert status == 400 and "connection closed before the whole body arrived" in body["error"]
    status, body = anyio.run(asgi_post(app, "/api/predict", [b"abc"], {**headers, "content-length": "3x"}))
    assert status == 400 and "bad Content-Length" in body["error"]


def test_requests_beyond_the_workers_and_the_queue_get_503_and_the_server_recovers(tiny_run):
    served = load_models([tiny_run])
    entered, release = threading.Event(), threading.Event()

    def hold(module, args):  # the first request stays inside the network until released
        entered.set()
        release.wait(10)

    handle = served[0].checkpoint.model.register_forward_pre_hook(hold)
    app = create_app(served, workers=1, queue=0)
    headers = {"content-type": "application/json"}
    body = json.dumps({"image": fake_digits(1, seed=1)[0][0].tolist()}).encode()

    async def scenario():
        results = {}

        async def first():
            results["first"] = await asgi_post(app, "/api/predict", [body], headers)()

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.to_thread.run_sync(entered.wait, 10)
            results["second"] = await asgi_post(app, "/api/predict", [body], headers)()
            release.set()
        return results

    results = anyio.run(scenario)
    assert results["first"][0] == 200
    assert results["second"][0] == 503 and "busy" in results["second"][1]["error"]
    handle.remove()
    assert anyio.run(asgi_post(app, "/api/predict", [body], headers))[0] == 200


# ---------------------------------------------------------------------------
# The page


def test_the_page_and_its_assets_come_from_the_app_itself(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert client.head("/").status_code == 200
    html = r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    links = re.findall(r"(?:src|href)=\"([^\"]+)\"", html)
    assert links and all(link.startswith(("/", "data:", "#")) for link in links), links
    assets = [link for link in links if link.startswith("/static/")]
    assert sorted(assets) == ["/static/app.js", "/static/style.css"]
    seen = set()
    while assets:  # the page's files and the JavaScript modules they import, and theirs
        asset = assets.pop()
        if asset in seen:
            continue
        seen.add(asset)
        r = client.get(asset)
        assert r.status_code == 200 and r.text
        assert not re.search(r"https?://|url\(|@import", r.text), asset  # nothing fetched from elsewhere
        if asset.endswith(".js"):  # a module must come as JavaScript, or the browser refuses it
            assert r.headers["content-type"].startswith("text/javascript"), asset
            assets += [f"/static/{name}" for name in re.findall(r'from "\./([\w.-]+\.js)"', r.text)]
    assert seen == {f"/static/{name}" for name in ("app.js", "api.js", "draw.js", "explore.js", "pictures.js",
                                                  "png.js", "train.js", "runs.js", "chart.js", "style.css")}
    assert "docs" not in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN


def test_the_openapi_document_describes_every_endpoint_and_its_errors(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/api/predict", "/api/models", "/api/models/{name}", "/api/health",
                                 "/api/models/{name}/confusion", "/api/models/{name}/examples", "/api/training",
                                 "/api/runs", "/api/runs/{name}", "/api/runs/{name}/events", "/api/events"}
    predict = spec["paths"]["/api/predict"]["post"]
    assert set(predict["requestBody"]["content"]) >= {"image/png", "multipart/form-data", "application/json"}
    assert {"400", "404", "408", "413", "415", "422", "503"} <= set(predict["responses"])
    assert predict["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {p["name"] for p in predict["parameters"]} == {"model", "activations", "preparation", "saliency",
                                                         "saliency_class", "first_layer"}


# ---------------------------------------------------------------------------
# The command


def test_listening_addresses_the_warning_and_the_address_to_open():
    with listen("127.0.0.1", 0) as sock:
        assert is_loopback(sock)
        assert page_url("127.0.0.1", sock) == f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with listen("localhost", 0) as sock:
        assert is_loopback(sock) and page_url("localhost", sock).startswith("http://localhost:")
    with listen("0.0.0.0", 0) as sock:  # bound, never listening: nothing is reachable
        assert not is_loopback(sock)
        assert page_url("0.0.0.0", sock) == f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.mark.parametrize("argv, needle", [
    (["serve"], "the following arguments are required: RUN_OR_CHECKPOINT"),
    (["serve", "x", "--port", "70000"], "--port must be a number from 0 to 65535"),
    (["serve", "x", "--max-upload", "lots"], "--max-upload must be a size > 0"),
])
def test_serve_flag_errors_are_one_line_and_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_serve_reports_a_missing_model_and_a_busy_port_in_one_line(capsys, tiny_run, tmp_path):
    assert main(["serve", str(tmp_path / "nothing")]) == 1
    assert "no such run directory or checkpoint" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(tiny_run), "--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert "choose another --port" in err and len(err.splitlines()) == 1


def test_max_upload_sizes_take_k_and_m_suffixes():
    from mnistlab.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["serve", "x"]).max_upload == 2 * 1024 * 1024
    assert parse(["serve", "x", "--max-upload", "500K"]).max_upload == 500 * 1024
    assert parse(["serve", "x", "--max-upload", "3MB"]).max_upload == 3 * 1024 * 1024
    assert parse(["serve", "x", "--max-upload", "1234"]).max_upload == 1234


@pytest.mark.slow
def test_the_real_server_survives_cut_off_bodies_and_stops_cleanly_on_ctrl_c(tiny_run):
    server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", str(tiny_run), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [server.stdout.readline() for _ in range(2)]
        url = re.search(r"http://127\.0\.0\.1:\d+/", lines[1]).group(0)
        assert "warning" not in "".join(lines)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        for _ in range(5):  # clients that promise a body and hang up half-way
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                          b"Content-Length: 100000\r\n\r\n" + png(canvas_seven())[:500])
        request = urllib.request.Request(url + "api/predict", data=png(canvas_seven()),
                                         headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert json.loads(r.read())["model"] == "tiny"
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err
