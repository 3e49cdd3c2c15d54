"""The HTTP API of `xclip-engine serve`: a FastAPI app over an engine object (no Ray here, so the
endpoints, validation and guard rails run in-process under FastAPI's TestClient).

The engine (engine/serve/deployment.py in a Ray Serve replica, or a test's stand-in) provides:
`settings` (Settings), `ready` (bool), `load_error` (str or None), `info()` (dict for /v1/models),
`num_frames`, `image_size`, `decode_pool` (an Executor), and the coroutines `classify(clip, labels,
topk)` -> [(label, score)] and `embed(clip)` -> [float], which it batches across requests.
Optional (the defaults are X-CLIP's): `read_args` (read_clip's arguments beyond path, views and
decoder: the model's own, engine.decode_ahead.model_read_args), `default_views` ("1x1"; EVL "3x1"),
`closed_set` (False; True: the model scores its own classes, `default_labels`, and a request's
labels field is refused) and `family`.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

MAX_LABELS = 1000
MAX_CLIPS = 4          # views NxM: at most 4 clips (the official 4x3 test is the largest)
MAX_TOPK = 1000
API_KEY_ENV = "XCLIP_ENGINE_API_KEY"


@dataclass
class Settings:
    labels: list[str] | None = None      # the server's default label set (else the model's own)
    labels_from: str | None = None       # the option that gave `labels` ("--labels", "--labels-file"): for errors
    max_upload_mb: float = 64.0
    decode_timeout_s: float = 30.0
    max_queue: int = 64                  # requests admitted at once per replica; more get 503
    retry_after_s: int = 1
    api_key: str | None = field(default=None, repr=False)


class ApiError(Exception):
    """A request the server refuses: answered as {"error": message} with `status`."""

    def __init__(self, status: int, message: str, headers: dict | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.extra = extra or {}   # more fields of the JSON answer beside "error"


class Admission:
    """The bounded queue: at most `limit` requests in a replica at once (decoding, waiting for a
    batch or in the model); one more is refused at once (503 with Retry-After), not queued."""

    def __init__(self, limit: int):
        self.limit, self.active, self.draining = max(1, int(limit)), 0, False
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.draining or self.active >= self.limit:
                return False
            self.active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.active = max(0, self.active - 1)


_REGISTRY: dict = {}   # this process's engine (a Ray Serve replica has one)


def set_engine(engine) -> None:
    _REGISTRY["engine"] = engine


def current_engine():
    """The engine of this process, or None. Module-level, so that Ray Serve's pickled copy of the
    app (cloudpickle pickles importable functions by reference) finds the replica's engine."""
    return _REGISTRY.get("engine")


def check_api_key(header: str | None, key: str | None) -> bool:
    """True when no key is set, or `Authorization: Bearer <key>` carries it (constant-time compare)."""
    if not key:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), key.encode())


def parse_request_labels(text: str | None, default: list[str] | None) -> tuple[str, ...]:
    from ..io.labels import parse_labels

    if text is None or not text.strip():
        if not default:
            raise ApiError(422, "no labels: send the form field labels=\"a, b, c\" (the server has no default set)")
        return tuple(default)
    if text.count(",") + 1 > MAX_LABELS:
        raise ApiError(422, f"too many labels ({text.count(',') + 1}); at most {MAX_LABELS} per request")
    try:
        with warnings.catch_warnings():   # repeats are merged; a client's duplicates are no server warning
            warnings.simplefilter("ignore")
            return tuple(parse_labels(text))
    except ValueError as e:
        raise ApiError(422, str(e).replace("--labels", "labels")) from None


def parse_topk(text: str | None) -> int:
    if text is None or text == "":
        return 5
    try:
        k = int(text)
    except ValueError:
        raise ApiError(422, f"topk must be an integer from 1 to {MAX_TOPK}, got {text!r}") from None
    if not 1 <= k <= MAX_TOPK:
        raise ApiError(422, f"topk must be an integer from 1 to {MAX_TOPK}, got {k}")
    return k


def closed_set_labels_error(family: str, classes: list[str]) -> ApiError:
    """A closed-set model (EVL) asked to score a request's labels: 422, saying what it classifies."""
    shown = ", ".join(classes[:10]) + (f", ... ({len(classes) - 10} more)" if len(classes) > 10 else "")
    return ApiError(422, f"this {family.upper()} model is a closed-set classifier of {len(classes)} classes: it "
                         f"scores its own classes ({shown}; GET /v1/models lists them all), not free-text labels; "
                         "leave the labels field out",
                    extra={"closed_set": True, "num_classes": len(classes)})


def parse_views_field(text: str | None, default: str = "1x1") -> str:
    from ..video.transforms import parse_views

    views = text or default
    try:
        clips, _ = parse_views(views)
    except ValueError as e:
        raise ApiError(422, str(e)) from None
    if clips > MAX_CLIPS:
        raise ApiError(422, f"views {views!r}: at most {MAX_CLIPS} clips per video (e.g. 1x1 or 4x3)")
    return views


def decode_upload(data: bytes, read_args: dict, views: str):
    """Uploaded bytes -> clip [V, T, 3, S, S]: written to a private temporary file (read_clip reads
    paths), which is removed whatever happens. Runs on a decode thread, never the model's.
    `read_args`: read_clip's num_frames and size, and an EVL model's preprocessing."""
    from ..video import decoders
    from ..video.errors import VideoError

    fd, path = tempfile.mkstemp(prefix="xclip-upload-", suffix=".video")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return decoders.read_clip(path, **read_args, views=views, decoder="auto")
        except VideoError as e:   # the server's temporary path means nothing to the client
            why = (e.message or str(e)).replace(path, "the upload")
            raise ApiError(422, f"the upload is not a usable video: {why}") from None
        except Exception as e:   # any decoder failure is the upload's problem, never a 500
            why = f"{type(e).__name__}: {e}".replace(path, "the upload")
            raise ApiError(422, f"the upload is not a usable video ({why})") from None
    finally:
        os.unlink(path)


async def _limited(stream, limit: int):
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, f"the upload is larger than the server's limit of {limit / 2**20:g} MB")
        yield chunk


async def read_form(request: Request, settings: Settings):
    """The multipart form, read with the upload limit enforced while the body streams in."""
    limit = int(settings.max_upload_mb * 2**20)
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + 64 * 1024:   # form fields' allowance
        raise ApiError(413, f"the upload is larger than the server's limit of {settings.max_upload_mb:g} MB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send multipart/form-data with the video in the field 'file'")
    parser = MultiPartParser(request.headers, _limited(request.stream(), limit + 64 * 1024),
                             max_files=1, max_fields=8)
    try:
        return await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, f"bad multipart form: {e.message}") from None


async def _upload_bytes(form, limit: int) -> bytes:
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(422, "no video: send it as the multipart file field 'file'")
    data = await upload.read()
    if not data:
        raise ApiError(422, "the uploaded file is empty")
    if len(data) > limit:
        raise ApiError(413, f"the upload is larger than the server's limit of {limit / 2**20:g} MB")
    return data


def _field(form, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(422, f"the form field {name!r} must be text, not a file")
    return value


class ApiKeyMiddleware:
    """Every request but /healthz needs the API key when one is set. A plain ASGI middleware: Starlette's
    @app.middleware("http") runs each request through an extra task and memory streams."""

    def __init__(self, app, get_engine):
        self.app, self.get_engine = app, get_engine

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/healthz":
            engine = self.get_engine()
            key = engine.settings.api_key if engine is not None else os.environ.get(API_KEY_ENV)
            given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None)
            if not check_api_key(given, key):
                refusal = JSONResponse({"error": "missing or wrong API key: send Authorization: Bearer <key>"},
                                       status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(get_engine) -> FastAPI:
    """The FastAPI app; `get_engine()` returns the engine of this process (None until it exists)."""
    app = FastAPI(title="xclip-engine", description="X-CLIP and EVL video classification and embeddings over HTTP")

    def engine_or_503():
        engine = get_engine()
        if engine is None or not engine.ready:
            why = getattr(engine, "load_error", None) if engine is not None else None
            raise ApiError(503, f"the model failed to load: {why}" if why else "the model is loading; try again",
                           {"Retry-After": "2"})
        return engine

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        return JSONResponse({"error": str(exc.errors())}, status_code=422)

    app.add_middleware(ApiKeyMiddleware, get_engine=get_engine)

    @app.get("/healthz")
    async def healthz():
        engine_or_503()
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"models": [engine_or_503().info()]}

    async def admitted(request: Request, work):
        engine = engine_or_503()
        if not engine.admission.try_enter():
            raise ApiError(503, "the server is busy (its request queue is full); retry later",
                           {"Retry-After": str(engine.settings.retry_after_s)})
        try:
            return await work(engine, request)
        finally:
            engine.admission.leave()

    def views_of(engine, form) -> str:
        return parse_views_field(_field(form, "views"), getattr(engine, "default_views", None) or "1x1")

    async def decoded(engine, form, views: str):
        data = await _upload_bytes(form, int(engine.settings.max_upload_mb * 2**20))
        loop = asyncio.get_running_loop()
        read_args = getattr(engine, "read_args", None) or dict(num_frames=engine.num_frames, size=engine.image_size)
        job = loop.run_in_executor(engine.decode_pool, decode_upload, data, read_args, views)
        try:
            return await asyncio.wait_for(job, engine.settings.decode_timeout_s)
        except asyncio.TimeoutError:
            limit = engine.settings.decode_timeout_s
            raise ApiError(408, f"decoding the upload took longer than {limit:g} s") from None

    async def classify_work(engine, request):
        t0 = time.perf_counter()
        form = await read_form(request, engine.settings)
        try:
            asked = _field(form, "labels")
            if getattr(engine, "closed_set", False):   # EVL: its own classes, named by the model (or --labels-file)
                if asked is not None and asked.strip():
                    raise closed_set_labels_error(getattr(engine, "family", "evl"), list(engine.default_labels))
                labels = tuple(engine.default_labels)
            else:
                labels = parse_request_labels(asked, engine.settings.labels or engine.default_labels)
            topk, views = parse_topk(_field(form, "topk")), views_of(engine, form)
            clip = await decoded(engine, form, views)
            top = await engine.classify(clip, labels, min(topk, len(labels)))
        finally:
            await form.close()
        return {"top": [{"label": lab, "score": s} for lab, s in top], **_meta(engine, t0)}

    async def embed_work(engine, request):
        t0 = time.perf_counter()
        form = await read_form(request, engine.settings)
        try:
            clip = await decoded(engine, form, views_of(engine, form))
            vector = await engine.embed(clip)
        finally:
            await form.close()
        return {"embedding": vector, "dim": len(vector), **_meta(engine, t0)}

    @app.post("/v1/classify")
    async def classify(request: Request):
        """multipart: file (the video), labels ("a, b, c"; not for a closed-set model such as EVL, which
        scores its own classes), topk (default 5), views (NxM: 1x1, 4x3, 3x1; default the model's own)."""
        return await admitted(request, classify_work)

    @app.post("/v1/embed")
    async def embed(request: Request):
        """multipart: file (the video), views (default the model's own) -> the video embedding (views
        averaged; EVL: its query token's features, before the head)."""
        return await admitted(request, embed_work)

    return app


def _meta(engine, t0: float) -> dict:
    info = engine.info()
    return {"model": info["name"], "backend": info["backend"], "elapsed_ms": round((time.perf_counter() - t0) * 1e3, 2)}
