"""The Ray Serve deployment behind `xclip-engine serve`: each replica loads the model once (backend
auto) on its model thread, serves the FastAPI app of engine/serve/app.py, decodes uploads on a
thread pool, and scores the decoded clips of concurrent requests together with @serve.batch.
X-CLIP scores each request's labels; a closed-set model (EVL) scores its own classes, no text.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve

from .app import Admission, Settings, create_app, current_engine, set_engine

app = create_app(current_engine)   # the routes look up this replica's engine per request


@serve.deployment(name="xclip", graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=120,
                  health_check_period_s=5, logging_config={"log_level": "WARNING"})
@serve.ingress(app)
class XclipDeployment:
    def __init__(self, model_src: str | None, settings: Settings, max_batch: int = 8, batch_wait_s: float = 0.01,
                 decode_workers: int | None = None, backbone: str | None = None):
        self.settings = settings
        self.admission = Admission(settings.max_queue)
        self.model, self.load_error, self.default_labels = None, None, None
        self.read_args, self.default_views, self.usage_error = None, "1x1", False
        self._model_src, self._backbone = model_src, backbone
        self._classify_batch.set_max_batch_size(max_batch)
        self._classify_batch.set_batch_wait_timeout_s(batch_wait_s)
        self._embed_batch.set_max_batch_size(max_batch)
        self._embed_batch.set_batch_wait_timeout_s(batch_wait_s)
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="xclip-model")   # torch runs here only
        self.model_gate = ModelGate()
        self.batch_counts = [0, 0]   # model calls, requests in them: /v1/models reports the mean batch
        # Decode threads: the cores the model thread leaves (a 2-core machine: 1). On 2 cores at 16
        # clients, 1, 2 and 4 threads served the same rate within this machine's noise (78-102 req/s,
        # two runs each); fewer threads leave the model thread its core and hold fewer clips in memory.
        self.decode_pool = ThreadPoolExecutor(decode_workers or max(1, min(8, (os.cpu_count() or 2) - 1)),
                                              thread_name_prefix="xclip-decode")
        set_engine(self)
        self._model_pool.submit(self._load)   # /healthz answers 503 until this is done

    def _load(self):
        from ..checkpoint import CheckpointError
        from ..io.labels import ClosedSetError

        try:
            from ..api import load
            from ..decode_ahead import model_read_args, model_views

            model = load(self._model_src, backend="auto", backbone=self._backbone)
            threads, ms = model_threads(model)
            self.default_labels = self._labels_of(model)
            self.read_args, self.default_views = model_read_args(model), model_views(model, None)
            self.model = model   # last: ready from here on
            print(f"xclip-engine serve: replica ready, backend {model.backend_note}; torch threads {threads} (one "
                  f"video on one thread: {ms:.0f} ms)", flush=True)
        except CheckpointError as e:   # the user's to fix (e.g. --backbone with an X-CLIP model): no traceback
            self.load_error = f"cannot load the model {self._model_src or '(bundled default)'}: {e}"
            self.usage_error = True
        except ClosedSetError as e:    # --labels / a wrong --labels-file for an EVL model: the message says how
            self.load_error, self.usage_error = str(e), True
        except Exception as e:   # reported by /healthz and by status() to the starting command
            self.load_error = f"{type(e).__name__}: {e}"
            traceback.print_exc()

    def _labels_of(self, model) -> list[str] | None:
        """The default label set: X-CLIP's model's own (--labels overrides it per server, a request's
        labels field per request); a closed-set model's class names (renamed by --labels-file only)."""
        from ..io.labels import ClosedSetError

        if not model.closed_set:
            return list(model.labels) if model.labels else None
        from ..decode_ahead import model_labels

        n = model.num_classes
        if self.settings.labels is not None and self.settings.labels_from == "--labels":
            raise ClosedSetError(
                f"--labels: this {model.family.upper()} model is a closed-set classifier of {n} classes; it cannot "
                "score free-text labels. Its classes are named by the model itself (leave --labels out), or rename "
                f"them with --labels-file FILE of {n} names (k400 for a Kinetics-400 model)")
        return model_labels(model, self.settings.labels)   # the names checked: one per class

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def closed_set(self) -> bool:
        return bool(self.model is not None and self.model.closed_set)

    @property
    def family(self) -> str:
        return self.model.family if self.model is not None else "xclip"

    @property
    def num_frames(self) -> int:
        return self.model.num_frames

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def status(self) -> dict:
        """For the starting command (through a deployment handle): loaded yet, or why not."""
        return {"ready": self.ready, "error": self.load_error, "usage_error": self.usage_error}

    def info(self) -> dict:
        m = self.model
        name = os.path.basename(os.path.normpath(m.origin)) if m.origin else "model"
        labels = (self.default_labels if m.closed_set else self.settings.labels or self.default_labels) or []
        precision = getattr(m.choice, "precision", None) or "fp32"
        # the width of /v1/embed's vectors: X-CLIP's embedding; EVL's query token (the backbone's width)
        dim = m.config.width if m.closed_set else m.config.embed_dim
        info = {"name": name, "origin": m.origin, "kind": m.kind, "family": m.family, "closed_set": m.closed_set,
                "backend": f"{m.backend} {precision}", "backend_note": m.backend_note, "num_frames": m.num_frames,
                "image_size": m.image_size, "default_views": self.default_views, "embed_dim": dim,
                "default_labels": len(labels),
                # how well requests are batched so far (tuning --max-batch / --batch-wait-ms)
                "batches": self.batch_counts[0], "requests_batched": self.batch_counts[1]}
        if m.closed_set:   # what it classifies: a request cannot send labels, so it can read them here
            info.update(num_classes=m.num_classes, classes=list(labels))
            if m.backbone_origin:
                info["backbone"] = m.backbone_origin
        return info

    async def classify(self, clip: np.ndarray, labels: tuple, topk: int):
        await self.model_gate.wait_free()
        return _raise_if_error(await self._classify_batch((clip, labels, topk)))

    async def embed(self, clip: np.ndarray):
        await self.model_gate.wait_free()
        return _raise_if_error(await self._embed_batch(clip))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _classify_batch(self, items: list) -> list:
        return await self._on_model(self._classify_now, items)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _embed_batch(self, clips: list) -> list:
        return await self._on_model(self._embed_now, clips)

    async def _on_model(self, fn, batch: list) -> list:
        with self.model_gate:
            self.batch_counts[0] += 1
            self.batch_counts[1] += len(batch)
            return await asyncio.get_running_loop().run_in_executor(self._model_pool, fn, batch)

    def _classify_now(self, items: list) -> list:
        """One model call per label set in the batch (all views of all its videos together); a
        closed-set model: one call, no text (its labels are its class names, one set)."""
        import torch

        from ..video.transforms import average_views

        out: list = [None] * len(items)
        groups: dict = {}
        for i, (_, labels, _) in enumerate(items):
            groups.setdefault(labels, []).append(i)
        for labels, idx in groups.items():
            try:
                clips = [items[i][0] for i in idx]
                with torch.inference_mode():
                    if self.model.closed_set:
                        p = self.model.logits(np.concatenate(clips))
                    else:
                        text = self.model.encode_text(list(labels))   # cached per label set by the model
                        p = self.model.logits(np.concatenate(clips), text)
                    p = p.float().softmax(dim=-1)
                    probs = average_views(p, [len(c) for c in clips]).cpu()
                for row, i in zip(probs, idx):
                    score, top = row.topk(items[i][2])
                    out[i] = [(labels[j], float(s)) for s, j in zip(score.tolist(), top.tolist())]
            except Exception as e:
                for i in idx:
                    out[i] = RuntimeError(f"the model failed on this batch ({type(e).__name__}: {e})")
        return out

    def _embed_now(self, clips: list) -> list:
        import torch

        try:
            with torch.inference_mode():
                v = self.model.encode_video(np.concatenate(clips)).float().cpu()
            rows, start = [], 0
            for c in clips:
                rows.append(v[start:start + len(c)].mean(0).tolist())   # views averaged
                start += len(c)
            return rows
        except Exception as e:
            return [RuntimeError(f"the model failed on this batch ({type(e).__name__}: {e})")] * len(clips)


LIGHT_MODEL_MS = 20.0


def model_threads(model) -> tuple[int, float]:
    """Set torch's threads for this replica's model: all its CPUs (Ray sets OMP_NUM_THREADS to the
    replica's num_cpus) for a heavy model, one for a light one; returns (threads, ms). The measure:
    one video through the model on one thread. Light (under LIGHT_MODEL_MS, about what decoding and
    HTTP take per request on small clips): the decode thread and the event loop need the other cores,
    and torch's idle threads spin on them; measured on 2 cores, 16 clients, the bundled model (7 ms):
    1 thread served 79-98 req/s, 2 threads 66-69 (26 ms of CPU per request against 13-17). Heavy (B/32,
    about 500 ms): the model is the work; 1 thread held the server to 57% of xe.infer, all cores 87%."""
    import time

    import torch

    cores = torch.get_num_threads()
    if str(model.device) != "cpu":
        return cores, 0.0
    clip = np.zeros((1, model.num_frames, 3, model.image_size, model.image_size), np.float32)
    torch.set_num_threads(1)
    with torch.inference_mode():
        model.encode_video(clip)   # warm-up: first-call allocations
        t0 = time.perf_counter()
        model.encode_video(clip)
        ms = (time.perf_counter() - t0) * 1e3
    threads = 1 if ms < LIGHT_MODEL_MS else cores
    torch.set_num_threads(threads)
    return threads, ms


class ModelGate:
    """Holds decoded requests back while a batch is in the model, then lets them all into @serve.batch
    at once. Why: serve.batch closes a batch when its wait runs out even while the previous batch still
    holds the model, so under load it lines up many batches of one or two behind the model, and the
    model pays its per-call cost for each (on 2 cores, 16 clients: mean batch 1.3, about 10 ms per
    video against 3.6 at batch 8). Held here instead, the requests that arrive during a model call
    form the next batch together. With the model idle, a request passes at once (no added latency)."""

    def __init__(self):
        self.busy = 0
        self._free: asyncio.Event | None = None   # made on the event loop that awaits it

    async def wait_free(self) -> None:
        if self._free is None:
            self._free = asyncio.Event()
            self._free.set()
        while self.busy:
            await self._free.wait()

    def __enter__(self):
        self.busy += 1
        if self._free is not None:
            self._free.clear()
        return self

    def __exit__(self, *exc):
        self.busy -= 1
        if not self.busy and self._free is not None:
            self._free.set()


def _raise_if_error(result):
    if isinstance(result, Exception):
        raise result
    return result
