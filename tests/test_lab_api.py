"""The lab's API (the page's Draw and Explore views): the confusion matrix and the test images behind its
cells, computed once per model version and outside the prediction workers; the preparation's steps, the
saliency map and the first layer on /api/predict. (The rest of the API: test_serve.py.)"""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx2 as httpx  # the [test] extra's client (Starlette's TestClient uses it too)
import numpy as np
import pytest
import torch
from conftest import fake_digits
from PIL import Image

pytest.importorskip("fastapi", reason="mnistlab serve needs the serve extra: pip install -e '.[serve]'")
anyio = pytest.importorskip("anyio")
from fastapi.testclient import TestClient  # noqa: E402

from mnistlab.base.models import architecture, build_model  # noqa: E402
from mnistlab.base.prepare import load_image, prepare_steps  # noqa: E402
from mnistlab.commands import lab  # noqa: E402
from mnistlab.commands.serve import create_app, load_models  # noqa: E402
from mnistlab.core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from mnistlab.core.evaluation import evaluate  # noqa: E402
from mnistlab.core.explain import first_layer, integrated_gradients  # noqa: E402
from test_serve import canvas_seven, error_of, png  # noqa: E402

EXTRAS = "?preparation=1&saliency=1&first_layer=1"


def canvas() -> bytes:
    """What the page sends: a 280x280 PNG of dark strokes on white paper."""
    return png(canvas_seven(280))


def decoded(data_url: str) -> np.ndarray:
    head, payload = data_url.split(",", 1)
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
        assert image.mode == "L"
        return np.asarray(image)


def untrained(folder, kind: str, data_dir) -> None:
    """Save an untrained network of `kind` as a checkpoint trained from `data_dir`."""
    torch.manual_seed(1)
    arch = architecture(kind, (1, 28, 28), 10, hidden=(16,))
    save_checkpoint(folder, build_model(arch).state_dict(), {
        "architecture": arch, "dataset": "mnist", "classes": [str(d) for d in range(10)],
        "normalization": {"mean": 0.5, "std": 0.5}, "metrics": {}, "data_dir": str(data_dir)})


@pytest.fixture(scope="module")
def client(tiny_run):
    with TestClient(create_app(load_models([tiny_run]))) as c:
        yield c


def checkpoint_of(client, name: str = "tiny"):
    """The checkpoint the app serves as `name`."""
    return client.app.state.mnistlab.models[name].checkpoint


@pytest.fixture(scope="module")
def guessing_run(tmp_path_factory, tiny_idx_dir):
    """An untrained MLP on the tiny dataset: mistakes in many cells of its confusion matrix."""
    folder = tmp_path_factory.mktemp("runs") / "guessing"
    untrained(folder, "mlp", tiny_idx_dir)
    return folder


class Counting:
    """`evaluation.answers` as the server calls it, counting the calls (and holding them while `hold` is clear)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        real = lab.answers

        def answers(checkpoint, split):
            self.calls += 1
            self.entered.set()
            self.hold.wait(30)
            return real(checkpoint, split)

        monkeypatch.setattr(lab, "answers", answers)


# ---------------------------------------------------------------------------
# The confusion matrix and its cells


def test_the_confusion_matrix_is_evaluates_on_the_test_set(client, tiny_run):
    r = client.get("/api/models/tiny/confusion")
    assert r.status_code == 200, r.text
    matrix = r.json()
    expected = evaluate(tiny_run)
    assert matrix["confusion"] == expected.confusion
    assert matrix["per_class_accuracy"] == pytest.approx(expected.per_class_accuracy)
    assert (matrix["correct"], matrix["total"]) == (expected.correct, expected.total) == (expected.correct, 200)
    assert matrix["accuracy"] == pytest.approx(expected.accuracy)
    assert matrix["classes"] == expected.classes and matrix["dataset"] == "mnist" and matrix["model"] == "tiny"
    assert matrix["commit"] == json.loads((tiny_run / "model.json").read_text()).get("commit")  # the version


def test_a_cells_images_are_the_test_images_with_their_probabilities_most_confident_first(guessing_run):
    checkpoint = load_checkpoint(guessing_run)
    test = checkpoint.load_data(download=False).test
    with TestClient(create_app(load_models([guessing_run]))) as c:
        matrix = c.get("/api/models/guessing/confusion").json()["confusion"]
        cells = [(t, p) for t in range(10) for p in range(10) if matrix[t][p] >= 2]
        assert sum(t != p for t, p in cells) >= 5 and any(t == p for t, p in cells)
        for t, p in cells:
            r = c.get(f"/api/models/guessing/examples?true={t}&predicted={p}&limit=100")
            assert r.status_code == 200, r.text
            found = r.json()
            assert (found["true"], found["predicted"], found["true_label"], found["predicted_label"]) == (
                t, p, str(t), str(p))
            assert found["total"] == matrix[t][p] == len(found["examples"]) and found["offset"] == 0
            confidence = [e["probabilities"][p] for e in found["examples"]]
            assert confidence == sorted(confidence, reverse=True)  # off the diagonal: the most confidently wrong first
            for example in found["examples"]:
                i = example["index"]
                assert int(test.labels[i]) == t
                assert example["image"] == test.images[i].tolist()
                assert np.allclose(example["probabilities"], checkpoint.predict_proba(test.images[i])[0], atol=1e-6)
                assert int(np.argmax(example["probabilities"])) == p
        assert sum(len(c.get(f"/api/models/guessing/examples?true={t}&predicted={p}&limit=100").json()["examples"])
                   for t in range(10) for p in range(10)) == 200  # every test image in exactly one cell


def test_a_cell_comes_in_pages(client):
    matrix = client.get("/api/models/tiny/confusion").json()["confusion"]
    t = int(np.argmax([row[k] for k, row in enumerate(matrix)]))  # the fullest diagonal cell
    whole = client.get(f"/api/models/tiny/examples?true={t}&predicted={t}&limit=100").json()["examples"]
    pages = [client.get(f"/api/models/tiny/examples?true={t}&predicted={t}&limit=5&offset={o}").json()
             for o in range(0, len(whole) + 5, 5)]
    assert [e for page in pages for e in page["examples"]] == whole
    assert pages[-1]["examples"] == [] and pages[-1]["total"] == len(whole)
    assert len(client.get(f"/api/models/tiny/examples?true={t}&predicted={t}").json()["examples"]) == min(20, len(whole))


@pytest.mark.parametrize("query, status, needle", [
    ("true=10&predicted=1", 422, "true=10 is not a class of model 'tiny': its classes are 0 to 9"),
    ("true=1&predicted=12", 422, "predicted=12 is not a class"),
    ("true=-1&predicted=1", 422, "true: Input should be greater than or equal to 0"),
    ("true=one&predicted=1", 422, "true: Input should be a valid integer"),
    ("true=1", 422, "predicted: Field required"),
    ("true=1&predicted=1&limit=0", 422, "limit: Input should be greater than or equal to 1"),
    ("true=1&predicted=1&limit=101", 422, "limit: Input should be less than or equal to 100"),
    ("true=1&predicted=1&offset=-3", 422, "offset"),
])
def test_bad_cells_get_a_4xx_with_one_line(client, query, status, needle):
    assert needle in error_of(client.get(f"/api/models/tiny/examples?{query}"), status)


def test_an_unknown_model_is_404_on_the_lab_routes_too(client):
    assert "no model named 'nope'" in error_of(client.get("/api/models/nope/confusion"), 404)
    assert "tiny" in error_of(client.get("/api/models/nope/examples?true=1&predicted=1"), 404)


def test_a_model_whose_test_data_cannot_be_found_is_503_and_still_draws(tmp_path, monkeypatch):
    cnn_run = tmp_path / "cnn-mnist"
    untrained(cnn_run, "cnn", tmp_path / "gone")  # its data folder has gone ...
    monkeypatch.setenv("HOME", str(tmp_path))  # ... and none of the usual places holds MNIST
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mnistlab.base.data.download", lambda *a, **k: pytest.fail("the server downloaded"))
    with TestClient(create_app(load_models([cnn_run]))) as c:
        for path in ("/api/models/cnn-mnist/confusion", "/api/models/cnn-mnist/examples?true=1&predicted=1"):
            message = error_of(c.get(path), 503)
            assert "the test images of model 'cnn-mnist' cannot be loaded (mnist not found in" in message
            assert "drawing still works" in message
        r = c.post(f"/api/predict{EXTRAS}", content=canvas(), headers={"Content-Type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["first_layer"]["kind"] == "filters"


# ---------------------------------------------------------------------------
# Computed once per model version, in a thread of its own


def test_the_test_set_is_run_once_per_model_version(tiny_run, monkeypatch):
    counting = Counting(monkeypatch)
    models = load_models([tiny_run, tiny_run])  # two names, one model
    with TestClient(create_app(models)) as c:
        first = c.get("/api/models/tiny/confusion").json()
        c.get("/api/models/tiny/examples?true=1&predicted=1")
        c.get("/api/models/tiny-2/confusion")
        assert counting.calls == 1
        # the run commits a new epoch: a new version of the model, the same path
        models[0].checkpoint = load_checkpoint(tiny_run)
        models[0].checkpoint.meta["commit"] = "3-0123abcd"
        second = c.get("/api/models/tiny/confusion").json()
        assert counting.calls == 2 and second["commit"] == "3-0123abcd"
        assert second["confusion"] == first["confusion"]  # (the same weights here)
        c.get("/api/models/tiny/confusion")
        assert counting.calls == 2


def test_requests_arriving_during_the_evaluation_wait_for_it_and_drawing_goes_on(tiny_run, monkeypatch):
    counting = Counting(monkeypatch)
    counting.hold.clear()
    app = create_app(load_models([tiny_run]), workers=1)
    image = {"image": fake_digits(1, seed=3)[0][0].tolist()}

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            results = {}

            async def get(key, path):
                results[key] = await c.get(path)

            async with anyio.create_task_group() as tg:
                tg.start_soon(get, "a", "/api/models/tiny/confusion")
                await anyio.to_thread.run_sync(counting.entered.wait, 10)
                tg.start_soon(get, "b", "/api/models/tiny/examples?true=2&predicted=2")
                # the one prediction worker is free while the test set is being run
                drawn = await c.post("/api/predict", json=image)
                assert drawn.status_code == 200
                assert "a" not in results and "b" not in results
                counting.hold.set()
            return results

    results = anyio.run(scenario)
    assert results["a"].status_code == 200 and results["b"].status_code == 200
    assert counting.calls == 1


# ---------------------------------------------------------------------------
# /api/predict's explanations


def test_the_preparation_steps_are_the_pipelines_own(client):
    body = canvas()
    r = client.post("/api/predict?preparation=1", content=body, headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    answer = r.json()
    steps = prepare_steps(load_image(io.BytesIO(body)))
    shown = {step["name"]: step for step in answer["preparation"]}
    assert list(shown) == ["drawn", "ink", "cropped", "fitted", "centred"]
    for name, pixels in [("drawn", steps.grey), ("ink", steps.ink), ("cropped", steps.cropped),
                         ("fitted", steps.fitted), ("centred", steps.image)]:
        picture = decoded(shown[name]["image"])
        assert picture.shape == pixels.shape == (shown[name]["height"], shown[name]["width"])
        assert np.array_equal(picture, np.clip(np.round(pixels), 0, 255).astype(np.uint8)), name
        assert shown[name]["title"]
    rows, cols = steps.crop
    assert shown["ink"]["box"] == [rows.start, cols.start, rows.stop, cols.stop]
    assert decoded(shown["centred"]["image"]).tolist() == answer["prepared"]
    assert answer["saliency"] is None and answer["first_layer"] is None and answer["activations"] is None


def test_an_array_sent_as_it_is_has_no_preparation_and_one_to_prepare_has(client):
    image = fake_digits(1, seed=2)[0][0]
    as_is = client.post("/api/predict?preparation=1", json={"image": image.tolist()}).json()
    assert as_is["preparation"] is None
    prepared = client.post("/api/predict?preparation=1", json={"image": image.tolist(), "prepare": True}).json()
    assert [s["name"] for s in prepared["preparation"]] == ["drawn", "ink", "cropped", "fitted", "centred"]


def test_the_saliency_map_is_integrated_gradients_of_the_predicted_or_the_chosen_class(client):
    image = fake_digits(1, seed=4)[0][0]
    checkpoint = checkpoint_of(client)
    answer = client.post("/api/predict?saliency=1", json={"image": image.tolist()}).json()
    saliency = answer["saliency"]
    expected = integrated_gradients(checkpoint, image, answer["prediction"])
    assert (saliency["method"], saliency["baseline"], saliency["steps"]) == ("integrated gradients", "black", 32)
    assert (saliency["target"], saliency["label"]) == (answer["prediction"], answer["label"])
    assert np.allclose(saliency["values"], expected.values, atol=1e-6)
    assert saliency["change"] == pytest.approx(expected.change, abs=1e-6)
    assert saliency["total"] == pytest.approx(float(expected.values.sum()), abs=1e-4)
    other = (answer["prediction"] + 1) % 10
    chosen = client.post(f"/api/predict?saliency=1&saliency_class={other}", json={"image": image.tolist()}).json()
    assert chosen["prediction"] == answer["prediction"] and chosen["saliency"]["target"] == other
    assert np.allclose(chosen["saliency"]["values"], integrated_gradients(checkpoint, image, other).values, atol=1e-6)


@pytest.mark.parametrize("query, needle", [
    ("saliency=1&saliency_class=10", "saliency_class=10 is not a class of model 'tiny': its classes are 0 to 9"),
    ("saliency=1&saliency_class=-1", "saliency_class: Input should be greater than or equal to 0"),
    ("preparation=perhaps", "preparation: Input should be a valid boolean"),
    ("first_layer=2", "first_layer: Input should be a valid boolean"),
])
def test_bad_explanation_parameters_are_422_with_one_line(client, query, needle):
    r = client.post(f"/api/predict?{query}", content=canvas(), headers={"Content-Type": "image/png"})
    assert needle in error_of(r, 422)


def test_the_first_layer_gives_the_most_active_units_with_their_weights(client):
    image = fake_digits(1, seed=5)[0][0]
    layer = client.post("/api/predict?first_layer=1", json={"image": image.tolist()}).json()["first_layer"]
    expected = first_layer(checkpoint_of(client), image)
    assert (layer["kind"], layer["description"], layer["size"]) == ("units", "Linear(784, 128) + ReLU", 128)
    assert [u["index"] for u in layer["units"]] == [u.index for u in expected.units]
    for unit, want in zip(layer["units"], expected.units):
        assert unit["activation"] == pytest.approx(want.activation, abs=1e-5)
        assert np.allclose(unit["weights"], want.weights, atol=1e-4)  # sent to 4 decimals


def test_the_page_asks_for_everything_in_one_request_and_the_answer_is_typed(client):
    r = client.post(f"/api/predict{EXTRAS}&activations=1", content=canvas(),
                    headers={"Content-Type": "image/png"})
    assert r.status_code == 200
    answer = r.json()
    assert len(answer["preparation"]) == 5 and len(answer["saliency"]["values"]) == 28
    assert len(answer["first_layer"]["units"]) == 8 and len(answer["activations"]) == 2
    assert len(r.content) < 80_000  # floats rounded in float64, not 17-digit float32 expansions
    json.dumps(answer)


def test_the_openapi_document_describes_the_lab_routes_and_parameters(client):
    spec = client.get("/openapi.json").json()
    confusion = spec["paths"]["/api/models/{name}/confusion"]["get"]
    examples = spec["paths"]["/api/models/{name}/examples"]["get"]
    assert {"200", "404", "503"} <= set(confusion["responses"])
    assert {"200", "404", "422", "503"} <= set(examples["responses"])
    assert {p["name"]: p["required"] for p in examples["parameters"]} == {
        "name": True, "true": True, "predicted": True, "limit": False, "offset": False}
    predict = {p["name"] for p in spec["paths"]["/api/predict"]["post"]["parameters"]}
    assert {"preparation", "saliency", "saliency_class", "first_layer"} <= predict
    out = spec["components"]["schemas"]["PredictionOut"]["properties"]
    assert {"preparation", "saliency", "first_layer"} <= set(out)


# ---------------------------------------------------------------------------
# Fuzzed from the OpenAPI document, with the served model's own name (test_serve_fuzz.py fuzzes every
# route, where a random name is nearly always a 404)


def lab_schema(tiny_run):
    schemathesis = pytest.importorskip("schemathesis")
    app = create_app(load_models([tiny_run]))
    document = json.loads(json.dumps(app.openapi()))
    document["paths"] = {path: item for path, item in document["paths"].items()
                         if path.startswith("/api/models/{name}/")}
    for item in document["paths"].values():
        for parameter in item["get"]["parameters"]:
            if parameter["name"] == "name":
                parameter["schema"] = {"type": "string", "enum": ["tiny"]}
    schema = schemathesis.openapi.from_dict(document)
    schema.app = app
    return schema


@pytest.fixture(scope="module")
def named_schema(tiny_run):
    return lab_schema(tiny_run)


try:
    import schemathesis
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )
except ImportError:  # the test below is skipped by lab_schema's importorskip
    schemathesis = None

if schemathesis is not None:
    named = schemathesis.pytest.from_fixture("named_schema")

    @pytest.mark.slow
    @named.parametrize()
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def test_the_lab_routes_never_answer_5xx_nor_outside_their_description(case):
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])
