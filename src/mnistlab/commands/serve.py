"""`mnistlab serve`: the lab, a page of views, and an HTTP API for trained models.

The page (static files in `static/`, served by the app itself: it works offline)
has views. Draw: a person draws a character and sees, live, what `mnistlab
predict` would say (the class, every class's probability), each step of the
preparation (`prepare.prepare_steps`: prepare_image with its steps kept) to the
28x28 image the network sees, which pixels pushed the class up (integrated
gradients), and what its hidden and first layers make of it. Explore: the
model's confusion matrix on its test set (`evaluation.answers`, whose counts are
`evaluate`'s) and the test images behind each cell. What these views need beyond
an answer is in lab.py. The API behind it (`/api/...`) is described by the app's
OpenAPI document (`/openapi.json`).

Classification goes through the very functions `predict` uses
(`prepare.load_image`, `prepare.prepare_image`, `prediction.predict_array`), so
page, API and CLI agree. Bad input of any kind is a 4xx with `{"error": "..."}`.
`POST /api/predict`, called at every stroke, is a `DirectRoute`: no FastAPI
dependency system, no Starlette router (see docs/serve.md for what each costs).

`serve()` runs the app in several processes, one per core (`server.py`: idle,
slow and oversized clients are cut off there), each classifying on its event
loop with one torch thread. `create_app` alone (tests, other ASGI servers)
classifies in a small pool of worker threads instead; requests beyond the pool
wait in a bounded queue, and beyond that are refused with 503. Every request
must name an allowed `Host` (against DNS rebinding), and when the server is
reachable from other machines every API call must carry its token.
"""

from __future__ import annotations

import functools
import hmac
import io
import ipaddress
import json
import os
import re
import secrets
import socket
import threading
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Sequence

import asyncio
import contextlib

import anyio
import numpy as np
import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as Path_
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .. import __version__
from ..core.activations import ActivationTap
from ..core.checkpoint import Checkpoint, load_checkpoint
from ..core.runs import is_run
from ..base.errors import CheckpointError, DataError, PredictionError, UsageError
from .jobs import (Bounds, Jobs, ModelFolder, Refused, RunList, RunOut, Started, Stopped, Training,
                   TrainSettings)
from .lab import (MAX_EXAMPLES, AnswerCache, Answered, Confusion, Examples, Extras, FirstLayerOut,
                  PreparationStep, SaliencyOut, confusion_out, examples_out, first_layer_out, preparation_out,
                  saliency_out)
from .lab import _rounded
from .prediction import predict_array_layers, result
from .server import AllowedHosts, Limits, StopSignals, reachable_address, run
from ..base.prepare import MIN_CONTRAST, SIZE, Preparation, TooManyPixels, load_image, prepare_steps

MAX_UPLOAD = 2 * 1024 * 1024  # bytes: a request body larger than this is refused (413)
MAX_SETTINGS = 16 * 1024  # bytes: a training request's JSON body at most
BODY_TIMEOUT = 10.0  # seconds for a whole request body to arrive; slower ones get 408
QUEUE = 32  # requests that may wait for a busy worker; more at once get 503
TOKEN_COOKIE = "mnistlab_token"  # + the port: one per server on a machine
STATIC = Path(__file__).parent.parent / "static"
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
# The page loads nothing from elsewhere; the browser is told to refuse it too.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


# ---------------------------------------------------------------------------
# The API's documents (these make the OpenAPI description)

class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong and what to do, in one line")


class LayerActivation(BaseModel):
    name: str = Field(description="e.g. 'hidden 1'")
    description: str = Field(description="the layer and its activation, e.g. 'Linear(784, 128) + ReLU'")
    shape: list[int] = Field(description="[units] for an MLP layer, [channels, height, width] for feature maps")
    values: list[float] = Field(description="the outputs for this image, flattened in row-major order, "
                                "rounded to 4 decimals")


class PredictionOut(BaseModel):
    model: str = Field(description="the model that answered")
    prediction: int = Field(description="index of the most likely class")
    label: str = Field(description="name of the most likely class")
    probabilities: list[float] = Field(description="one per class, in class order; they sum to 1")
    prepared: list[list[int]] = Field(description="the 28x28 image the network saw (0..255, ink bright)")
    activations: list[LayerActivation] | None = Field(
        None, description="the hidden layers' outputs, when asked for with ?activations=1")
    preparation: list[PreparationStep] | None = Field(
        None, description="with ?preparation=1: each step from the picture to the 28x28 image; null when a "
        "28x28 array was sent to be used as it is (nothing was prepared)")
    saliency: SaliencyOut | None = Field(None, description="with ?saliency=1: which pixels pushed the class up")
    first_layer: FirstLayerOut | None = Field(
        None, description="with ?first_layer=1: the first layer's weights, the most active first; null for "
        "an ensemble (each member has its own)")


class ArrayIn(BaseModel):
    """A JSON request to /api/predict."""

    model_config = ConfigDict(extra="forbid")
    image: Annotated[
        list[Annotated[list[Annotated[float, Field(ge=0, le=255, allow_inf_nan=False)]],
                       Field(min_length=SIZE, max_length=SIZE)]],
        Field(min_length=SIZE, max_length=SIZE,
              description="28 rows of 28 grey levels, 0..255")]
    prepare: bool = Field(False, description="false: the array is already MNIST-style (bright ink on black, "
                          "centred) and goes to the network as it is; true: it is prepared like an uploaded "
                          "picture first")


class PredictQuery(BaseModel):
    """The query parameters of /api/predict (others are ignored: a `token`, for one)."""

    activations: bool = Field(False, description="also return the hidden layers' outputs")
    preparation: bool = Field(False, description="also return each step of the preparation as a PNG")
    saliency: bool = Field(False, description="also return the saliency map (integrated gradients)")
    saliency_class: int | None = Field(None, ge=0, description="the class the saliency map explains "
                                       "(default: the predicted one)")
    first_layer: bool = Field(False, description="also return the first layer's most active units or filters")
    model: str | None = Field(None, description="a name from /api/models (default: /api/models' default)")


class ModelSummary(BaseModel):
    name: str
    dataset: str
    model: str = Field(description="mlp or cnn")
    classes: list[str]
    test_accuracy: float | None = Field(description="measured at the end of training (0..1)")


class ModelList(BaseModel):
    models: list[ModelSummary]
    default: str | None = Field(description="the model used when a request names none: the first model given, or "
                                "in a served folder the run that committed an epoch last (null: no model yet)")


class Architecture(BaseModel):
    model: str
    input_shape: list[int]
    hidden: list[int]
    activation: str
    output: str
    num_classes: int


class Normalization(BaseModel):
    mean: float
    std: float


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    epochs: int | None = None
    train_loss: list[float] | None = None
    test_accuracy: float | None = None
    val_accuracy: float | None = None
    train_seconds: float | None = None


class HiddenLayer(BaseModel):
    name: str
    description: str


class ModelInfo(BaseModel):
    name: str
    dataset: str
    architecture: Architecture
    classes: list[str]
    normalization: Normalization
    metrics: Metrics
    parameters: int = Field(description="number of trained weights")
    hidden_layers: list[HiddenLayer] = Field(description="the layers whose outputs ?activations=1 returns")


class Health(BaseModel):
    status: str = Field(description="'ok' while the server answers")
    version: str
    models: int
    workers: int = Field(description="inference threads in the process that answered (one torch thread "
                         "each); 0: it classifies on its event loop, one request at a time")
    in_flight: int = Field(description="prediction requests being worked on or waiting now")
    max_upload_bytes: int


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody} for code in codes}


# Every format Pillow reads is accepted as a raw body; these are the ones listed.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
PREDICT_BODY = {
    "required": True,
    "description": "an image file (PNG, JPEG, BMP, GIF, WebP, TIFF; transparent pixels are paper) as the raw "
                   "body or as the multipart field 'image'; or JSON holding a 28x28 array",
    "content": {
        "image/png": _BINARY,
        "image/jpeg": _BINARY,
        "application/octet-stream": _BINARY,
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                           "properties": {"image": {"type": "string", "format": "binary"}}}},
        "application/json": {"schema": ArrayIn.model_json_schema()},
    },
}


# ---------------------------------------------------------------------------
# Models

@dataclass
class ServedModel:
    name: str
    checkpoint: Checkpoint
    tap: ActivationTap
    info: ModelInfo


def model_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """URL-safe names from the run folders (`runs/fast-mnist` -> `fast-mnist`), made unique by -2, -3, ..."""
    names, seen = [], {}
    for path in paths:
        path = Path(path).resolve()
        # A checkpoint file is named after its run folder unless its own name says more.
        stem = path.name if path.is_dir() else path.parent.name if path.stem == "model" else path.stem
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "model"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def serve_model(name: str, checkpoint: Checkpoint) -> ServedModel:
    """Wrap a loaded checkpoint for serving; CheckpointError if its metadata does not describe it."""
    tap = ActivationTap(checkpoint.model)
    meta = checkpoint.meta
    try:
        info = ModelInfo(
            name=name, dataset=meta["dataset"], architecture=meta["architecture"], classes=meta["classes"],
            normalization=meta["normalization"], metrics=meta.get("metrics") or {},
            parameters=sum(p.numel() for p in checkpoint.model.parameters()),
            hidden_layers=[HiddenLayer(name=n, description=d) for n, d in tap.layers])
    except (KeyError, TypeError, ValidationError) as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(f"{checkpoint.path}: incomplete checkpoint metadata ({first})") from None
    if len(info.classes) != info.architecture.num_classes:
        raise CheckpointError(f"{checkpoint.path}: {len(info.classes)} class names for "
                              f"{info.architecture.num_classes} outputs")
    return ServedModel(name, checkpoint, tap, info)


def load_models(paths: Sequence[str | os.PathLike]) -> list[ServedModel]:
    """Load each checkpoint once (on the CPU) and name it after its run folder."""
    return [serve_model(name, load_checkpoint(path)) for name, path in zip(model_names(paths), paths)]


def model_folder(folder: str | os.PathLike) -> ModelFolder[ServedModel]:
    """The models of the runs under `folder`, following it (see `jobs.ModelFolder`), looked at once now."""
    models = ModelFolder(Path(folder).resolve(), lambda name, run_dir: serve_model(name, load_checkpoint(run_dir)),
                         lambda served: served.checkpoint.meta.get("commit"))
    models.refresh()
    return models


def is_folder_of_runs(path: str | os.PathLike) -> bool:
    """Whether `path` is served as a folder of runs (a folder that is not itself a run), rather than as one model."""
    path = Path(path)
    return path.is_dir() and not is_run(path)


# ---------------------------------------------------------------------------
# Classifying (in worker threads)

class ApiError(Exception):
    """A request that cannot be answered: its HTTP status and one line for {"error": ...}."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Picture:
    """An uploaded image file, still encoded."""

    data: bytes


@dataclass
class Array:
    """A 28x28 array sent as JSON."""

    image: np.ndarray
    prepare: bool


_worker = threading.local()


def _one_torch_thread() -> None:
    # Each worker computes one request with one thread: with one worker per core,
    # concurrent requests never ask for more threads than there are cores.
    if not getattr(_worker, "single", False):
        torch.set_num_threads(1)
        _worker.single = True


def classify(served: ServedModel, source: Picture | Array, activations: bool,
             extras: Extras = Extras()) -> PredictionOut:
    """What `mnistlab predict` does for one image, plus the prepared image and, if asked, the hidden
    layers and the `extras`."""
    _one_torch_thread()
    steps = None
    if isinstance(source, Picture):
        try:
            picture = load_image(io.BytesIO(source.data), name="upload")
        except TooManyPixels as e:
            raise ApiError(413, f"the upload is {e.reason}") from None
        except PredictionError as e:
            raise ApiError(400, f"the upload is {e.reason}" if e.reason.startswith("not an image")
                           else f"the upload cannot be read: {e.reason}") from None
        steps = _prepare(picture)
        image = steps.image
    elif source.prepare:
        steps = _prepare(source.image)
        image = steps.image
    else:
        image = np.round(source.image).astype(np.uint8)
        if image.max() < MIN_CONTRAST:  # ink as faint as this is no ink to the preparation either
            raise ApiError(422, f"no ink found (the brightest value of the array is {source.image.max():g}, "
                           f"less than {MIN_CONTRAST:g}); MNIST-style ink is bright on black, in grey levels "
                           "0..255")
    checkpoint = served.checkpoint
    try:
        probs, kept = predict_array_layers(checkpoint, image, served.tap.indices if activations else ())
        layers = served.tap.outputs(kept) if activations else None
    except PredictionError as e:
        raise ApiError(422, e.reason) from None
    answer = result(served.name, probs, checkpoint.classes)  # predict's own choice of the best class
    target = answer["prediction"] if extras.saliency_class is None else extras.saliency_class
    return PredictionOut(
        model=served.name, prediction=answer["prediction"], label=answer["label"],
        probabilities=answer["probabilities"], prepared=image.tolist(),
        activations=None if layers is None else [
            LayerActivation(name=layer.name, description=layer.description, shape=list(layer.values.shape),
                            values=_rounded(layer.values.ravel(), 4))
            for layer in layers],
        preparation=preparation_out(steps) if extras.preparation and steps is not None else None,
        saliency=saliency_out(checkpoint, image, target) if extras.saliency else None,
        first_layer=first_layer_out(checkpoint, image) if extras.first_layer else None)


def _prepare(image: Any) -> Preparation:
    try:
        return prepare_steps(image)
    except PredictionError as e:
        raise ApiError(422, f"{e.reason}; draw or upload a darker or larger character") from None


class Workers:
    """At most `workers` classifications at once in threads; at most `queue` more waiting; beyond: 503.

    `workers=0`: on the event loop, one at a time (the server's processes give the parallelism): a
    hop to a thread and back costs more CPU than an array's whole classification.
    """

    def __init__(self, workers: int, queue: int):
        self.workers = workers
        self.limit = workers + queue
        self.in_flight = 0  # touched only on the event loop: no lock needed
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, work: Callable[[], Any]) -> Any:
        if not self.workers:
            return work()
        if self.in_flight >= self.limit:
            raise ApiError(503, f"busy: {self.in_flight} requests are being worked on or waiting; "
                           "try again in a moment")
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.workers)
        self.in_flight += 1
        try:
            return await anyio.to_thread.run_sync(work, limiter=self._limiter)
        finally:
            self.in_flight -= 1


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------
# Reading requests

async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, refusing it as soon as it is known to be too large, too slow or cut off."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"bad Content-Length header {declared!r}")
        if int(declared) > limit:
            raise ApiError(413, _too_large(int(declared), limit))
    chunks, size = [], 0
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, _too_large(size, limit))
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout:g} s; send it at once") from None
    except ClientDisconnect:
        raise ApiError(400, "the connection closed before the whole body arrived") from None
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> str:
    return (f"the body is too large ({size} bytes, more than the limit of {limit}); send a smaller image "
            "(or start the server with a larger --max-upload)")


async def parse_body(content_type: str, body: bytes, limit: int) -> Picture | Array:
    """A Picture or an Array from the body, according to its Content-Type (ApiError otherwise)."""
    media = content_type.split(";")[0].strip().lower()
    if not body:
        raise ApiError(400, "the body is empty; send an image file, or JSON {\"image\": [[...28 numbers], ...]}")
    if media == "multipart/form-data":
        return Picture(await _multipart_image(content_type, body, limit))
    if media == "application/json" or media.endswith("+json"):
        return _json_array(body)
    if media.startswith(RAW_IMAGE_TYPES):
        return Picture(body)
    raise ApiError(415, f"unsupported Content-Type {media or '(none)'!r}: send the image as the body with "
                   "Content-Type image/png (or another image/*), as multipart/form-data field 'image', "
                   "or application/json {\"image\": 28x28 array}")


async def _multipart_image(content_type: str, body: bytes, limit: int) -> bytes:
    async def stream():
        yield body
        yield b""

    parser = MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=4, max_fields=16,
                             max_part_size=limit)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart body ({e.message})") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        image = form.get("image")
        if not isinstance(image, UploadFile):
            if len(files) != 1:
                raise ApiError(422, "the multipart body has no file field 'image' (curl -F image=@digit.png)")
            image = files[0]
        return await image.read()
    finally:
        await form.close()


def _json_array(body: bytes) -> Array:
    parsed = _validated_json(ArrayIn, body)
    return Array(np.asarray(parsed.image, dtype=np.float32), parsed.prepare)


Validated = typing.TypeVar("Validated", bound=BaseModel)


def _validated_json(model: type[Validated], body: bytes) -> Validated:
    """The body as `model`, parsed and validated in one pass by pydantic-core (a third of the time of
    json.loads and then validating the Python lists); 400 for bad JSON, 422 for a bad value."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors()
        if errors[0]["type"] == "json_invalid":  # bad syntax or encoding, a number out of range, too deep
            reason = errors[0]["msg"].removeprefix("Invalid JSON: ")
            raise ApiError(400, "malformed JSON (nested too deeply)" if "recursion limit" in reason
                           else f"malformed JSON ({reason})") from None
        raise ApiError(422, _validation_line(errors)) from None


def _validation_line(errors: Sequence[Any]) -> str:
    """Pydantic's first error as one line: `image.3: List should have at least 28 items ... (and 2 more)`."""
    first = errors[0]
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path"):  # where FastAPI found it: the name says enough
        loc = loc[1:]
    where = ".".join(str(p) for p in loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    hint = "; expected {\"image\": 28 rows of 28 numbers 0..255}" if where.startswith("image") else ""
    return f"{where or 'body'}: {first.get('msg', 'invalid')}{hint}{more}"


# ---------------------------------------------------------------------------
# The app

@dataclass
class ServerState:
    models: dict[str, ServedModel]
    default: str | None
    workers: Workers
    max_upload: int
    body_timeout: float
    answers: AnswerCache = field(default_factory=AnswerCache)
    folder: ModelFolder[ServedModel] | None = None  # a served folder: the models follow its runs
    jobs: Jobs | None = None  # ... and the page trains into it

    async def refresh(self, now: bool = False) -> None:
        """In a served folder, the models as its runs are now (at most a second old; `now`: looked at now)."""
        if self.folder is not None:
            self.models = await self.folder.current(now)
            self.default = self.folder.default


# Dependencies are coroutines: FastAPI runs plain functions in its thread pool, one hop per request each.
async def get_state(request: Request) -> ServerState:
    return request.app.state.mnistlab


async def get_model(state: Annotated[ServerState, Depends(get_state)],
              model: Annotated[str | None, Query(description="a name from /api/models "
                                                 "(default: /api/models' default)")] = None) -> ServedModel:
    await state.refresh()
    name = state.default if model is None else model
    if name is not None and name not in state.models:
        await state.refresh(now=True)  # a run that has just committed its first epoch
    if name is None:
        raise ApiError(404, "no model is served yet: train one (the page's Train view, or mnistlab train --out "
                       "FOLDER/NAME), then try again")
    if name not in state.models:
        shown = name if name.isprintable() and len(name) < 200 else "given"
        raise ApiError(404, f"no model named {shown!r}; the models are: {', '.join(state.models) or '(none yet)'}")
    return state.models[name]


async def get_jobs(state: Annotated[ServerState, Depends(get_state)]) -> Jobs:
    if state.jobs is None:
        raise ApiError(404, NO_FOLDER)
    return state.jobs


NO_FOLDER = ("this server serves the models it was given, not a folder of runs; start it as mnistlab serve FOLDER "
             "to train from the page")


def client_of(request: Request) -> str:
    """Who asks, for the per-client bounds: the address the request came from."""
    return request.client.host if request.client else "unknown"


def is_operator(request: Request) -> bool:
    """Whether the request comes from the server's own machine (loopback)."""
    try:
        return ipaddress.ip_address(client_of(request)).is_loopback
    except ValueError:
        return False


State = Annotated[ServerState, Depends(get_state)]
Model = Annotated[ServedModel, Depends(get_model)]
JobsOf = Annotated[Jobs, Depends(get_jobs)]
RunName = Annotated[str, Path_(description="a run's name as GET /api/runs lists it (its folder under the served "
                                             "folder, e.g. seed-mnist or seed-mnist-lrs/runs/lr0.01)")]


async def _answered(state: ServerState, served: ServedModel) -> Answered:
    """The model's answers on its test set (503 when its data cannot be found)."""
    try:
        return await state.answers.get(served.checkpoint)
    except DataError as e:
        raise ApiError(503, f"the test images of model {served.name!r} cannot be loaded "
                       f"({str(e).splitlines()[0]}); put the {served.info.dataset} files there or set "
                       "MNISTLAB_DATA, then try again (drawing still works)") from None


def _class_of(served: ServedModel, parameter: str, value: int | None) -> int | None:
    """`value` if it is one of the model's classes (or None); else a 422 naming `parameter`."""
    count = len(served.info.classes)
    if value is not None and not 0 <= value < count:
        raise ApiError(422, f"{parameter}={value} is not a class of model {served.name!r}: "
                       f"its classes are 0 to {count - 1}")
    return value


def create_app(models: Sequence[ServedModel] = (), max_upload: int = MAX_UPLOAD, workers: int | None = None,
               queue: int = QUEUE, body_timeout: float = BODY_TIMEOUT, hosts: AllowedHosts | None = None,
               token: str | None = None, folder: str | os.PathLike | None = None, bounds: Bounds | None = None,
               data_dir: str | os.PathLike | None = None) -> FastAPI:
    """The ASGI app: the page at `/`, the API under `/api/`, the OpenAPI document at `/openapi.json`.

    `hosts`: the Host headers answered (None: any, for tests and servers that check it themselves);
    `token`: when set, every API call must carry it (see `Gate`).
    `models`, or a `folder` of runs: its runs are the models, as they are at each request, and the page trains
    new ones into it within `bounds` (on the data in `data_dir`, else the usual places).
    """
    if not models and folder is None:
        raise UsageError("give at least one model to serve")
    if models and folder is not None:
        raise UsageError("serve one folder of runs, or run directories and checkpoints, not both")
    # No /docs or /redoc: their pages load scripts from a CDN, and this app works offline.
    app = FastAPI(title="mnistlab", version=__version__, docs_url=None, redoc_url=None, lifespan=_lifespan,
                  description="Classify drawings and pictures of single characters with models trained "
                  "by mnistlab, and train them. Every error is a 4xx or 503 with {\"error\": \"...\"}.")
    app.state.mnistlab = ServerState(
        models={m.name: m for m in models}, default=models[0].name if models else None,
        workers=Workers(default_workers() if workers is None else workers, queue), max_upload=max_upload,
        body_timeout=body_timeout)
    if folder is not None:
        state = app.state.mnistlab
        state.folder = model_folder(folder)
        state.models, state.default = state.folder.models, state.folder.default
        state.jobs = Jobs(folder, bounds or Bounds(jobs=default_workers()), data_dir)
    _add_error_handlers(app)
    app.add_middleware(DirectRoutes)  # inside Gate, which is added after it: the last added comes first
    app.add_middleware(Gate, hosts=hosts, token=token)
    async def predict(request: Request, query: Annotated[PredictQuery, Query()]) -> Response:
        state: ServerState = request.app.state.mnistlab
        served = await get_model(state, query.model)
        extras = Extras(query.preparation, query.saliency, _class_of(served, "saliency_class", query.saliency_class),
                        query.first_layer)
        body = await read_body(request, state.max_upload, state.body_timeout)
        source = await parse_body(request.headers.get("content-type", ""), body, state.max_upload)
        answer = await state.workers.run(lambda: classify(served, source, query.activations, extras))
        # Already a validated PredictionOut: serialised by pydantic-core, not validated again and
        # passed through json.dumps by FastAPI (5x the time for an MLP's answer, more for a CNN's maps).
        return Response(answer.model_dump_json(), media_type="application/json")

    app.router.add_api_route(
        "/api/predict", predict, methods=["POST"], route_class_override=DirectRoute, response_model=PredictionOut,
        openapi_extra={"requestBody": PREDICT_BODY}, responses=_errors(400, 401, 404, 408, 413, 415, 422, 503),
        summary="classify one image")

    @app.get("/api/models", response_model=ModelList, summary="the models this server holds")
    async def list_models(state: State) -> ModelList:
        await state.refresh()
        return ModelList(default=state.default, models=[
            ModelSummary(name=m.name, dataset=m.info.dataset, model=m.info.architecture.model,
                         classes=m.info.classes, test_accuracy=m.info.metrics.test_accuracy)
            for m in state.models.values()])

    # Names may hold '/' (a run of a comparison: seed-mnist-lrs/runs/lr0.01): the routes below the model
    # come before the model's own.
    @app.get("/api/models/{name:path}/confusion", response_model=Confusion, responses=_errors(404, 503),
             summary="the model's confusion matrix and per-class accuracy on its test set")
    async def confusion(name: str, state: State) -> Confusion:
        served = await get_model(state, name)
        return confusion_out(served.name, served.checkpoint, (await _answered(state, served)).answers)

    @app.get("/api/models/{name:path}/examples", response_model=Examples, responses=_errors(404, 422, 503),
             summary="the test images of one cell of the confusion matrix, with their probabilities")
    async def examples(name: str, state: State,
                       true: Annotated[int, Query(ge=0, description="the true class (a row of the matrix)")],
                       predicted: Annotated[int, Query(ge=0, description="the predicted class (a column)")],
                       limit: Annotated[int, Query(ge=1, le=MAX_EXAMPLES, description="images at most")] = 20,
                       offset: Annotated[int, Query(ge=0, le=10**9, description="images to skip")] = 0) -> Examples:
        served = await get_model(state, name)
        _class_of(served, "true", true)
        _class_of(served, "predicted", predicted)
        return examples_out(served.name, await _answered(state, served), true, predicted, offset, limit)

    @app.get("/api/models/{name:path}", response_model=ModelInfo, responses=_errors(404),
             summary="one model: architecture, dataset, classes, metrics")
    async def model_info(name: str, state: State) -> ModelInfo:
        return (await get_model(state, name)).info

    _add_training_routes(app)

    @app.get("/api/health", response_model=Health, summary="whether the server answers, and its load")
    async def health(state: State) -> Health:
        await state.refresh()
        return Health(status="ok", version=__version__, models=len(state.models),
                      workers=state.workers.workers, in_flight=state.workers.in_flight,
                      max_upload_bytes=state.max_upload)

    page_html = (STATIC / "index.html").read_text(encoding="utf-8").replace("{{version}}", __version__)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> Response:
        return Response(page_html, media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


SETTINGS_BODY = {"required": True, "content": {"application/json": {"schema": TrainSettings.model_json_schema()}}}
EVENT_STREAM = {200: {"description": "server-sent events (text/event-stream), until the run ends",
                      "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


def _add_training_routes(app: FastAPI) -> None:
    """The Train and Runs views' API: the runs of the served folder, and training jobs (jobs.py)."""

    @app.get("/api/training", response_model=Training, summary="what the page may train here: recipes, datasets, "
             "the server's bounds and how busy it is")
    async def training(request: Request, state: State) -> Training:
        if state.jobs is None:
            return Jobs.off(NO_FOLDER)
        return await anyio.to_thread.run_sync(state.jobs.training, client_of(request))

    @app.get("/api/runs", response_model=RunList, summary="every run in the served folder, with its state and "
             "curves, and the jobs waiting to start")
    async def list_runs(request: Request, state: State) -> RunList:
        if state.jobs is None:
            return RunList(runs=[])
        return RunList(runs=await anyio.to_thread.run_sync(state.jobs.list_runs, client_of(request)))

    @app.post("/api/runs", status_code=202, response_model=Started, openapi_extra={"requestBody": SETTINGS_BODY},
              responses=_errors(400, 403, 404, 408, 413, 415, 422, 429, 503, 507),
              summary="train: one run (lr), or learning rates compared as one batched group (lrs); the names "
              "of the runs, started now or queued")
    async def start_run(request: Request, state: State, jobs: JobsOf) -> Started:
        body = await read_body(request, MAX_SETTINGS, state.body_timeout)
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(415, f"unsupported Content-Type {media or '(none)'!r}: send the settings as "
                           "application/json, e.g. {\"recipe\": \"seed\", \"lr\": 0.01}")
        settings = _validated_json(TrainSettings, body)
        return await anyio.to_thread.run_sync(jobs.submit, settings, client_of(request))

    @app.get("/api/events", responses={**EVENT_STREAM, **_errors(404, 422)},
             summary="several runs' events in one stream (a browser holds few connections to a server)")
    async def run_events(jobs: JobsOf, run: Annotated[list[str], Query(
            min_length=1, max_length=16, description="a run's name; repeated for each run followed")]) -> Response:
        for name in run:  # 404 for a name that is no run, before the stream begins (off the event loop: it reads files)
            await anyio.to_thread.run_sync(jobs.run, name, "")
        return _event_stream(jobs.events(list(dict.fromkeys(run)), wrap=True))

    @app.get("/api/runs/{name:path}/events", responses={**EVENT_STREAM, **_errors(404)},
             summary="the run's events (core/events.py) as server-sent events: from its start, then live, until "
             "it ends; then an 'end' event with its state")
    async def events(request: Request, name: RunName, jobs: JobsOf) -> Response:
        await anyio.to_thread.run_sync(jobs.run, name, "")
        last = request.headers.get("last-event-id", "")
        return _event_stream(jobs.events([name], wrap=False, start=int(last) if last.isdigit() else 0))

    @app.get("/api/runs/{name:path}", response_model=RunOut, responses=_errors(404),
             summary="one run: state, settings, curves")
    async def get_run(request: Request, name: RunName, jobs: JobsOf) -> RunOut:
        return await anyio.to_thread.run_sync(jobs.run, name, client_of(request))

    @app.delete("/api/runs/{name:path}", response_model=Stopped, responses=_errors(403, 404, 409),
                summary="stop a run (its whole comparison) or take it off the queue; what is committed is kept, "
                "and the run can be resumed")
    async def stop_run(request: Request, name: RunName, jobs: JobsOf) -> Stopped:
        return await anyio.to_thread.run_sync(jobs.stop, name, client_of(request), is_operator(request))


def _event_stream(chunks) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    """With a served folder: start waiting jobs as processes free up (about once a second), and stop the
    jobs this process started when the server stops."""
    jobs: Jobs | None = app.state.mnistlab.jobs
    if jobs is None:
        yield
        return

    async def tick() -> None:
        while True:
            with contextlib.suppress(Refused, OSError):
                jobs.tick()
            await anyio.sleep(1.0)

    ticker = asyncio.get_running_loop().create_task(tick())
    try:
        yield
    finally:
        ticker.cancel()
        await anyio.to_thread.run_sync(jobs.close)


class Gate:
    """ASGI middleware in front of everything: the Host header, the token, the security headers.

    - A Host that `hosts` does not allow: 400 (a page from elsewhere reaching this server through
      DNS rebinding names its own host).
    - With a token: every API call (`/api/...`, `/openapi.json`) carries it as `Authorization: Bearer
      TOKEN`, as `?token=TOKEN`, or in the cookie that opening the page as `/?token=TOKEN` sets (then
      redirected to `/`, so that the address bar and bookmarks do not show it); without it: 401. The
      page and its files need no token: they hold nothing, and say what to do when the API refuses.
      The cookie is HttpOnly and SameSite=Strict: another site's page cannot send it.
    - SECURITY_HEADERS on every response.
    """

    def __init__(self, app, hosts: AllowedHosts | None, token: str | None):
        self.app = app
        self.hosts = hosts
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = authorization = cookie = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"authorization":
                authorization = value
            elif name == b"cookie":
                cookie = value
        if self.hosts is not None and not self.hosts.allows(host):
            shown = "none" if host is None else repr(host.decode("latin-1"))
            return await _refuse(send, 400, f"Host header {shown} is not a name of this server; open the "
                                 "address mnistlab serve printed (or start it with --allow-host NAME)")
        if self.token is not None:
            path = scope["path"]
            cookie_name = self._cookie_name(scope)
            if path.startswith("/api/") or path == "/openapi.json":
                if not self._carries_token(scope["query_string"], authorization, cookie, cookie_name):
                    return await _refuse(send, 401, "this server needs its token: open the address with "
                                         "?token=... that mnistlab serve printed, or send the header "
                                         "'Authorization: Bearer TOKEN'")
            elif path == "/" and self._query_token(scope["query_string"]) == self.token:
                return await _redirect_with_cookie(send, cookie_name, self.token)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    @staticmethod
    def _cookie_name(scope) -> bytes:
        server = scope.get("server")
        return f"{TOKEN_COOKIE}_{server[1]}".encode() if server and server[1] else TOKEN_COOKIE.encode()

    @staticmethod
    def _query_token(query: bytes) -> bytes | None:
        if b"token=" not in query:
            return None
        values = urllib.parse.parse_qs(query.decode("latin-1")).get("token")
        return values[0].encode("latin-1") if values else None

    def _carries_token(self, query: bytes, authorization: bytes | None, cookie: bytes | None,
                       cookie_name: bytes) -> bool:
        offered = []
        if authorization is not None and authorization[:7].lower() == b"bearer ":
            offered.append(authorization[7:].strip())
        if cookie is not None:
            offered += [value for name, _, value in (part.strip().partition(b"=") for part in cookie.split(b";"))
                        if name == cookie_name]
        from_query = self._query_token(query)
        if from_query is not None:
            offered.append(from_query)
        return any(hmac.compare_digest(value, self.token) for value in offered)


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": body})


async def _redirect_with_cookie(send, name: bytes, token: bytes) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", b"/"), (b"content-length", b"0"), (b"cache-control", b"no-store"),
        (b"set-cookie", name + b"=" + token + b"; Path=/; Max-Age=43200; HttpOnly; SameSite=Strict"),
        *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": b""})


class DirectRoute(APIRoute):
    """A route for an endpoint `endpoint(request, query)` whose query parameters are one pydantic model,
    validated in one call: FastAPI's dependency system is not involved, and with `DirectRoutes` in the
    app's middleware neither are Starlette's routing and exception middleware. For /api/predict, which
    the page calls at every stroke, these cost about 130 us of a 28x28 array's 0.5 ms. The OpenAPI
    document describes the route as FastAPI describes any other (FastAPI's query parameter models);
    invalid parameters are FastAPI's 422, the same line."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        endpoint = self.endpoint
        query_type = typing.get_args(typing.get_type_hints(endpoint, include_extras=True)["query"])[0]

        async def handler(request: Request) -> Response:
            try:
                query = query_type.model_validate(dict(request.query_params))
            except ValidationError as e:
                raise RequestValidationError(e.errors()) from None
            return await endpoint(request, query)

        self.handler = handler
        return handler


class DirectRoutes:
    """ASGI middleware that hands each request for a `DirectRoute` (its exact path and method) to the
    route's handler itself, ahead of Starlette's router, and answers its errors with the app's own
    exception handlers (`_add_error_handlers`). Anything else goes on to the app."""

    def __init__(self, app):
        self.app = app
        self.routes: dict[tuple[str, str], DirectRoute] | None = None  # found at the first request

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            if self.routes is None:
                self.routes = {(method, route.path): route for route in scope["app"].routes
                               if isinstance(route, DirectRoute) for method in route.methods}
            route = self.routes.get((scope["method"], scope["path"]))
            if route is not None:
                return await self._handle(route, scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    async def _handle(route: DirectRoute, scope, receive, send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await route.handler(request)
        except Exception as e:  # noqa: BLE001 - to the handler registered for it, as Starlette would
            handlers = scope["app"].exception_handlers
            kind = next((k for k in type(e).__mro__ if k in handlers), None)
            if kind is None:
                raise
            response = await handlers[kind](request, e)
            if kind is Exception:  # a bug: answered, then raised for the server to log
                await response(scope, receive, send)
                raise
        await response(scope, receive, send)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answer is {"error": "one line"}, whoever raised it."""

    @app.exception_handler(ApiError)
    @app.exception_handler(Refused)
    async def api_error(request: Request, exc: ApiError | Refused) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_line(exc.errors())}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: f"no such page or endpoint: {request.url.path}",
                   405: f"{request.method} is not allowed here"}.get(exc.status_code, str(exc.detail))
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server goes on"},
                            status_code=500)


# ---------------------------------------------------------------------------
# Running the server

def served_folder(paths: Sequence[str | os.PathLike]) -> Path | None:
    """The folder of runs to serve when `paths` is one, else None (UsageError when a folder of runs comes
    with other paths)."""
    folders = [Path(p) for p in paths if is_folder_of_runs(p)]
    if not folders:
        return None
    if len(paths) > 1:
        raise UsageError(f"{folders[0]}: serve one folder of runs alone, or run directories and checkpoints")
    return folders[0]


def training_line(bounds: Bounds) -> str:
    """What the page may train, for the operator."""
    if bounds.jobs < 1:
        return "training from the page: off (--train-jobs 0)"
    cap = f", at most {bounds.max_train_size} training images" if bounds.max_train_size else ""
    return (f"training from the page: {bounds.jobs} process{'es' if bounds.jobs > 1 else ''} at once, "
            f"{bounds.queue} waiting at most, {bounds.per_client} per client, at most {bounds.max_epochs} epochs"
            f"{cap} a run")


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for host:port (port 0: any free port); UsageError when that is impossible."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        hint = "; choose another --port" if e.errno in (98, 48) else ""  # EADDRINUSE (Linux, macOS)
        raise UsageError(f"cannot listen on {host} port {port} ({e.strerror}){hint}") from None
    return sock


def is_loopback(sock: socket.socket) -> bool:
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def page_url(host: str, sock: socket.socket, token: str | None = None) -> str:
    """The address to open on this machine (with the token, when there is one)."""
    address, port = sock.getsockname()[:2]
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:  # all interfaces: this machine reaches itself through loopback
        shown = "127.0.0.1" if ip.version == 4 else "[::1]"
    else:
        shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def new_token() -> str:
    """12 URL-safe characters (72 random bits): short enough for a QR code a phone reads from a projector."""
    return secrets.token_urlsafe(9)


def allowed_hosts(host: str, sock: socket.socket, extra: Sequence[str] = ()) -> AllowedHosts:
    """The Host values to answer: loopback names, the address served, `extra`; every address of this
    machine when serving on all of them."""
    return AllowedHosts([host, *extra], any_local_address=ipaddress.ip_address(sock.getsockname()[0]).is_unspecified)


def default_processes() -> int:
    """One server process per core this process may use, at most 16.

    Two per core were measured too (4 against 2 on 2 cores, alternated): 10% more CPU per canvas
    (2.92 against 2.65 ms), no better throughput or p99, 70 MiB more each."""
    return min(16, default_workers())


def qr_code(text: str) -> str | None:
    """`text` as a QR code in text characters for a terminal, if the optional `segno` is installed."""
    try:
        import segno
    except ImportError:
        return None
    out = io.StringIO()
    segno.make(text, error="l").terminal(out=out, compact=True, border=2)
    return out.getvalue().rstrip("\n")


def _worker_app(paths: list[str], max_upload: int, hosts: AllowedHosts, token: str | None, folder: Path | None,
                bounds: Bounds, data_dir: str | os.PathLike | None) -> FastAPI:
    """The app of one server process: it loads the models itself (or follows the folder), and classifies on
    its event loop with one torch thread (the processes are the parallelism)."""
    torch.set_num_threads(1)
    if folder is not None:
        return create_app(max_upload=max_upload, workers=0, hosts=hosts, token=token, folder=folder, bounds=bounds,
                          data_dir=data_dir)
    return create_app(load_models(paths), max_upload=max_upload, workers=0, hosts=hosts, token=token)


def serve(paths: Sequence[str | os.PathLike], host: str = "127.0.0.1", port: int = 8000,
          max_upload: int = MAX_UPLOAD, processes: int | None = None, token: str | None = None,
          allow_hosts: Sequence[str] = (), bounds: Bounds | None = None, data_dir: str | os.PathLike | None = None,
          log: Callable[[str], None] = print) -> None:
    """Load the models (or follow the folder of runs given alone, the page training into it within `bounds`),
    then serve the page and the API from `processes` processes until Ctrl-C or SIGTERM, and return
    (KeyboardInterrupt when Ctrl-C comes while the models load).

    Reachable from other machines (a `host` that is not loopback), the API needs a token: `token`, or
    a new one; it is printed in the address to open (and as a QR code when `segno` is installed).
    """
    with StopSignals() as stop:  # from here no Ctrl-C is lost, whatever Python is doing when it comes
        folder = served_folder(paths)
        # here once, so that a bad path is one line before anything listens
        models = load_models(paths) if folder is None else list(model_folder(folder).models.values())
        bounds = bounds or Bounds(jobs=default_workers())
        sock = listen(host, port)
        with sock:
            if token is None and not is_loopback(sock):
                token = new_token()
            processes = processes or default_processes()
            make_app = functools.partial(_worker_app, [str(p) for p in paths], max_upload,
                                         allowed_hosts(host, sock, allow_hosts), token, folder, bounds, data_dir)
            sock.listen(2048)  # from here connections wait in the kernel's queue until a process takes them
            names = ", ".join(f"{m.name} ({m.info.dataset}, {m.info.architecture.model})" for m in models)
            served = f"the runs in {folder}: {names or 'no model yet'}" if folder is not None else names
            log(f"serving {served} ({processes} process{'es' if processes > 1 else ''})")
            if folder is not None:
                log(training_line(bounds))
            log(f"open {page_url(host, sock, token)}   (Ctrl-C to stop)")
            if token is not None:
                _log_public_address(host, sock, token, log)
            run(make_app, sock, processes, Limits(body_timeout=BODY_TIMEOUT + 2), stop)


def _log_public_address(host: str, sock: socket.socket, token: str, log: Callable[[str], None]) -> None:
    port = sock.getsockname()[1]
    if ipaddress.ip_address(sock.getsockname()[0]).is_unspecified:
        address = reachable_address() or socket.gethostname()
        url = f"http://{address}:{port}/?token={token}"
        log(f"from other machines: {url}")
    else:
        url = page_url(host, sock, token)
    log("every API call needs this token; the page opened from this address keeps it")
    code = qr_code(url)
    if code:
        log(code)
