"""The Ray Serve deployment behind `xclip-engine serve`: each replica loads the model once (backend
auto) on its model thread, serves the FastAPI app of engine/serve/app.py, decodes uploads on a
thread pool, and scores the decoded clips of concurrent requests together with @serve.batch.
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
                 decode_workers: int | None = None):
        self.settings = settings
        self.admission = Admission(settings.max_queue)
        self.model, self.load_error, self.default_labels = None, None, None
        self._model_src = model_src
        self._classify_batch.set_max_batch_size(max_batch)
        self._classify_batch.set_batch_wait_timeout_s(batch_wait_s)
        self._embed_batch.set_max_batch_size(max_batch)
        self._embed_batch.set_batch_wait_timeout_s(batch_wait_s)
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="xclip-model")   # torch runs here only
        self.decode_pool = ThreadPoolExecutor(decode_workers or max(2, min(8, 2 * (os.cpu_count() or 1))),
                                              thread_name_prefix="xclip-decode")
        set_engine(self)
        self._model_pool.submit(self._load)   # /healthz answers 503 until this is done

    def _load(self):
        try:
            from ..api import load

            self.model = load(self._model_src, backend="auto")
            self.default_labels = list(self.model.labels) if self.model.labels else None
            print(f"xclip-engine serve: replica ready, backend {self.model.backend_note}", flush=True)
        except Exception as e:   # reported by /healthz and by status() to the starting command
            self.load_error = f"{type(e).__name__}: {e}"
            traceback.print_exc()

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def num_frames(self) -> int:
        return self.model.num_frames

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def status(self) -> dict:
        """For the starting command (through a deployment handle): loaded yet, or why not."""
        return {"ready": self.ready, "error": self.load_error}

    def info(self) -> dict:
        m = self.model
        name = os.path.basename(os.path.normpath(m.origin)) if m.origin else "model"
        labels = self.settings.labels or self.default_labels or []
        precision = getattr(m.choice, "precision", None) or "fp32"
        return {"name": name, "origin": m.origin, "kind": m.kind, "backend": f"{m.backend} {precision}",
                "backend_note": m.backend_note, "num_frames": m.num_frames, "image_size": m.image_size,
                "embed_dim": m.config.embed_dim, "default_labels": len(labels)}

    async def classify(self, clip: np.ndarray, labels: tuple, topk: int):
        return _raise_if_error(await self._classify_batch((clip, labels, topk)))

    async def embed(self, clip: np.ndarray):
        return _raise_if_error(await self._embed_batch(clip))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _classify_batch(self, items: list) -> list:
        return await asyncio.get_running_loop().run_in_executor(self._model_pool, self._classify_now, items)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _embed_batch(self, clips: list) -> list:
        return await asyncio.get_running_loop().run_in_executor(self._model_pool, self._embed_now, clips)

    def _classify_now(self, items: list) -> list:
        """One model call per label set in the batch (all views of all its videos together)."""
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
                    text = self.model.encode_text(list(labels))   # cached per label set by the model
                    p = self.model.logits(np.concatenate(clips), text).float().softmax(dim=-1)
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


def _raise_if_error(result):
    if isinstance(result, Exception):
        raise result
    return result
