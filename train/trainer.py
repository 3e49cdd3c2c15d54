"""The reference trainer: fully supervised X-CLIP fine-tuning (or training from scratch).

The recipe is the official one (microsoft/VideoX X-CLIP/main.py train_one_epoch): logits of every
clip against the whole label set, cross-entropy with soft targets (label smoothing, mixup /
cutmix), AdamW with two learning rates, warm-up + cosine per update, gradient accumulation, AMP.
The text features are computed inside each step, from the token ids of the label set, so the text
tower trains with the rest (unless model.freeze_text).

Several processes: started by torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the
run joins a torch.distributed process group (gloo on CPU, nccl on GPU) and wraps the model in
DistributedDataParallel; each process reads its share of every epoch through DistributedSampler.
The loss is normalised by the number of clips in the whole global window (all processes, all
accumulation steps), so 1 process with batch 2B and 2 processes with batch B compute the same
update. Only rank 0 logs, writes metrics and saves checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from xclip_engine.engine.checkpoint import CheckpointError, load_model
from xclip_engine.engine.config import XCLIPConfig, get_config
from xclip_engine.engine.model import XCLIP
from xclip_engine.engine.tokenizer import ClipTokenizer

from . import checkpoint as ckpt
from .config import ConfigError, RunConfig, write_config
from .data import ClipDataset, DataError, EpochSampler, collate, read_labels, read_list
from .evaluate import evaluate_model
from .optim import build_optimizer, build_scheduler, freeze_text, mix_batch, soft_cross_entropy_sum, soft_targets


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()


def setup_distributed(device: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = cuda but no CUDA GPU is visible; use train.device=cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dev = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(int(os.environ.get("RANK", "0")), world, local_rank, dev)


class RunLog:
    """Log lines (stderr + RUN/train.log) and metrics rows (RUN/metrics.jsonl), rank 0 only."""

    def __init__(self, out: str, d: Dist, quiet: bool = False):
        self.out, self.d, self.quiet = out, d, quiet

    def info(self, msg: str) -> None:
        if self.d.rank != 0:
            return
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)
        with open(os.path.join(self.out, "train.log"), "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def warn(self, msg: str) -> None:
        """Any rank: a skipped video is only seen by the process that read it."""
        prefix = f"[rank {self.d.rank}] " if self.d.active else ""
        print(f"warning: {prefix}{msg}", file=sys.stderr, flush=True)
        if self.d.rank == 0:
            with open(os.path.join(self.out, "train.log"), "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%H:%M:%S')} warning: {msg}\n")

    def metrics(self, row: dict) -> None:
        if self.d.rank == 0:
            with open(os.path.join(self.out, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class TrainStep(nn.Module):
    """What DDP wraps: text features from the label token ids, then logits [B, K], in one
    forward, so that DDP's gradient hooks see the text tower too."""

    def __init__(self, model: XCLIP, frozen_text: bool = False):
        super().__init__()
        self.model = model
        # a frozen text tower gives the same features every step: compute them once (the
        # official use_cache=FIX_TEXT), which saves a text forward over the whole label set
        self.frozen_text, self._text = frozen_text, None

    def forward(self, pixels, ids):
        if not self.frozen_text:
            return self.model(pixels, self.model.encode_text(ids))
        if self._text is None:
            with torch.no_grad():
                self._text = self.model.encode_text(ids)
        return self.model(pixels, self._text)


def _vocab_dir(source: str | None) -> str | None:
    if source and os.path.isdir(source) and all(os.path.isfile(os.path.join(source, f))
                                                for f in ("vocab.json", "merges.txt")):
        return source
    return None


def scratch_config(cfg: RunConfig) -> XCLIPConfig:
    try:
        base = get_config(cfg.model.arch)
        return XCLIPConfig.from_dict({**base.to_dict(), **cfg.model.config})
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(f"model.arch / model.config: {e}") from None


def build_model(cfg: RunConfig, resume_state: dict | None) -> XCLIP:
    """From the checkpoint being resumed, from model.source, or from scratch (seeded)."""
    torch.manual_seed(cfg.train.seed)
    if resume_state is not None:
        config = XCLIPConfig.from_dict(resume_state["config"])
        if cfg.model.source is None and config != scratch_config(cfg):
            raise CheckpointError(f"{resume_state['path']}: its model config differs from the run config's "
                                  "(model.arch / model.config); resume with the config the run started with")
        model = XCLIP(config)
        model.load_state_dict(resume_state["model"], strict=True)
        return model
    if cfg.model.source:
        if cfg.model.config:
            raise ConfigError("model.config applies to a model trained from scratch; with model.source "
                              "the architecture comes from the checkpoint (remove one of the two)")
        if cfg.model.logit_scale is not None:
            raise ConfigError("model.logit_scale sets the start of a model trained from scratch; a model.source "
                              "checkpoint brings its own learned scale (remove one of the two)")
        return load_model(cfg.model.source).model
    model = XCLIP(scratch_config(cfg))
    if cfg.model.logit_scale is not None:
        # From scratch with random (or frozen random) text features, every class's text feature starts
        # close to every other's (cosine ~0.97 between labels that differ in one word), so at CLIP's
        # 1/0.07 the logits of two such classes can differ by at most ~0.4 and the loss barely
        # rewards telling them apart; a larger start gives those distinctions a usable gradient.
        with torch.no_grad():
            model.logit_scale.fill_(math.log(float(cfg.model.logit_scale)))
    return model


def _autocast(amp: str, device: torch.device):
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp = fp16 needs a CUDA GPU (fp16 autocast with a GradScaler); "
                          "on CPU use train.amp=bf16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def run(cfg: RunConfig, resume: str | None = None, quiet: bool = False) -> dict:
    """Train as `cfg` says (resuming from `resume`, a run folder or .pt); returns a summary."""
    cfg.require_data()
    cfg = cfg.resolved()
    d = setup_distributed(cfg.train.device)
    threads = torch.get_num_threads()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        return _run(cfg, resume, d, quiet)
    finally:
        torch.set_num_threads(threads)   # a run called from Python must not change its caller's setting
        if d.active and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: RunConfig, resume: str | None, d: Dist, quiet: bool) -> dict:
    t, out = cfg.train, cfg.train.out
    os.makedirs(out, exist_ok=True)
    if d.rank == 0:
        write_config(cfg, os.path.join(out, "config.yaml"))
    log = RunLog(out, d, quiet)
    state = ckpt.load_training_checkpoint(resume) if resume else None

    labels = read_labels(cfg.data.labels)
    samples = read_list(cfg.data.train_list, len(labels), cfg.data.root, cfg.data.strict,
                        report=log.warn if d.rank == 0 else None)
    if state is not None and state["labels"] != labels:
        raise CheckpointError(f"{state['path']}: trained on a different label set than {cfg.data.labels}")
    model = build_model(cfg, state).to(d.device)
    c = model.config
    model.visual.gradient_checkpointing = cfg.model.gradient_checkpointing
    if cfg.model.freeze_text:
        freeze_text(model)
    sampler = EpochSampler(len(samples), t.batch_size, t.accumulation_steps, d.rank, d.world, t.seed)
    upe = sampler.updates_per_epoch
    if upe == 0:
        raise DataError(f"{cfg.data.train_list}: {len(samples)} usable videos do not fill one update of "
                        f"{t.batch_size} clips x {t.accumulation_steps} accumulation steps x {d.world} "
                        "process(es); lower train.batch_size or add videos")
    total = t.epochs * upe
    o = cfg.optim
    optimizer = build_optimizer(model, o.lr, o.new_lr_mult, o.weight_decay, o.betas, o.eps)
    scheduler = build_scheduler(optimizer, total, round(o.warmup_epochs * upe), o.min_lr_ratio)
    amp = _autocast(t.amp, d.device)   # validates amp against the device before any work
    scaler = None
    if t.amp == "fp16":   # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range
        scaler = torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()
    step, epoch, pos, best = 0, 0, 0, {}
    if state is not None:
        tr = state["train"]
        optimizer.load_state_dict(tr["optimizer"])
        scheduler.load_state_dict(tr["scheduler"])
        if scaler is not None and tr["scaler"]:
            scaler.load_state_dict(tr["scaler"])
        ckpt.set_rng_state(tr["rng"])
        step, epoch, pos, best = tr["step"], tr["epoch"], tr["update_in_epoch"], dict(tr["best"])
        log.info(f"resumed from {state['path']} at update {step} (epoch {epoch}, update {pos} of it)")
        changed = _changed_settings(tr["run_config"], cfg.to_dict())
        if changed:
            log.warn(f"resuming with settings that differ from the checkpoint's run: {', '.join(changed)}; "
                     "the learning-rate schedule continues as it was saved")
    step_module = TrainStep(model, frozen_text=cfg.model.freeze_text)
    if d.active:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    vocab = _vocab_dir(cfg.model.source)
    tokenizer = ClipTokenizer.from_folder(vocab) if vocab else ClipTokenizer()
    ids = tokenizer(labels, context_length=c.context_length).to(d.device)
    dataset = ClipDataset(samples, c.num_frames, c.image_size, train=True, aug=cfg.data, seed=t.seed)
    if cfg.data.cache:
        t_cache = time.time()
        nbytes = dataset.cache_frames(threads=max(1, cfg.data.workers))
        log.info(f"data.cache: decoded {len(samples)} videos into memory ({nbytes / 2**30:.2f} GiB) "
                 f"in {time.time() - t_cache:.0f} s")
    mixing = t.mixup > 0 or t.cutmix > 0
    ntrain = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(f"training {ntrain / 1e6:.2f} M parameters on {len(samples)} videos, {len(labels)} classes, "
             f"{d.world} process(es) on {d.device}, global batch {t.batch_size * d.world * t.accumulation_steps}, "
             f"{upe} updates per epoch, {total} in all; run folder {out}")

    def save(next_epoch: int, next_pos: int) -> None:
        if d.rank == 0:
            ckpt.save_training_checkpoint(os.path.join(out, ckpt.CHECKPOINT_NAME), model, labels, optimizer,
                                          scheduler, scaler, step=step, epoch=next_epoch,
                                          update_in_epoch=next_pos, run_config=cfg.to_dict(), best=best)

    reported: set = set()
    window = {"loss": 0.0, "clips": 0, "skipped": 0, "t0": time.time()}
    last_loss, stop = None, t.stop_at_step is not None and step >= t.stop_at_step
    if stop:
        log.info(f"already at update {step} (train.stop_at_step {t.stop_at_step}): nothing to train")
    model.train()
    while epoch < t.epochs and not stop:
        sampler.set_epoch(epoch, pos)
        # Cached clips need no decoding, and augmenting a cached clip is cheap: the main process does
        # it. Forking workers over gigabytes of cached arrays stalled them (seen: a worker idle for
        # minutes), and their copies would only compete with the model for the cores.
        loader = DataLoader(dataset, batch_size=t.batch_size, sampler=sampler,
                            num_workers=0 if cfg.data.cache else cfg.data.workers,
                            collate_fn=collate, pin_memory=d.device.type == "cuda")
        batches = iter(loader)
        for upd in range(pos, upe):
            micro = [next(batches) for _ in range(t.accumulation_steps)]
            for b in micro:
                for index, err in b["failed"]:
                    where = samples[index].where()
                    if cfg.data.strict:
                        raise DataError(f"{where}: {err} (--strict stops here; without it the video is skipped)")
                    if where not in reported:
                        reported.add(where)
                        log.warn(f"skipped {where}: {err}")
            local = sum(len(b["indices"]) for b in micro)
            count = d.all_sum([local])[0]
            for m, b in enumerate(micro):
                sync = contextlib.nullcontext() if not d.active or m == len(micro) - 1 else step_module.no_sync()
                if b["pixels"] is None:   # every clip of this micro-batch failed: keep DDP in step
                    pixels = torch.zeros(1, c.num_frames, 3, c.image_size, c.image_size)
                else:
                    pixels = b["pixels"]
                    targets = soft_targets(b["labels"], len(labels), t.label_smoothing)
                    if mixing:
                        rng = np.random.default_rng([t.seed, step, m, d.rank])
                        pixels, targets = mix_batch(pixels, targets, rng, t.mixup, t.cutmix, t.mix_switch_prob)
                with sync:
                    with amp:
                        logits = step_module(pixels.to(d.device, non_blocking=True), ids)
                    if b["pixels"] is None:
                        loss_sum = logits.float().sum() * 0.0
                    else:
                        loss_sum = soft_cross_entropy_sum(logits, targets.to(d.device))
                    loss = loss_sum * (d.world / max(count, 1.0))
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                window["loss"] += float(loss_sum.detach())
            window["clips"] += local
            window["skipped"] += sum(len(b["failed"]) for b in micro)
            if count > 0:
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            else:
                log.warn(f"update {step}: every clip of the global batch failed to decode; update skipped")
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            done_epoch = upd + 1 == upe
            stop = t.stop_at_step is not None and step >= t.stop_at_step
            if step % t.log_every == 0 or done_epoch or stop:
                loss_total, clips, skipped = d.all_sum([window["loss"], window["clips"], window["skipped"]])
                elapsed = max(time.time() - window["t0"], 1e-9)
                last_loss = loss_total / max(clips, 1)
                lrs = {g["group"]: g["lr"] for g in optimizer.param_groups}
                row = {"step": step, "epoch": epoch + (upd + 1) / upe, "loss": last_loss,
                       "lr": lrs.get("clip", lrs.get("clip_no_decay")),
                       "lr_new": lrs.get("new", lrs.get("new_no_decay")),
                       "clips_per_s": clips / elapsed, "skipped": int(skipped), "time": time.time()}
                log.metrics(row)
                log.info(f"step {step}/{total} epoch {epoch} loss {last_loss:.4f} lr {row['lr'] or 0:.3g} "
                         f"clips/s {row['clips_per_s']:.1f}" + (f" skipped {int(skipped)}" if skipped else ""))
                window = {"loss": 0.0, "clips": 0, "skipped": 0, "t0": time.time()}
            nxt = (epoch + 1, 0) if done_epoch else (epoch, upd + 1)
            if stop or done_epoch or (t.save_every and step % t.save_every == 0):
                if done_epoch and cfg.data.val_list and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
                    best = _validate(cfg, model, labels, tokenizer, d, log, step, epoch, best)
                save(*nxt)
            if stop:
                break
        del batches, loader
        epoch, pos = epoch + 1, 0
    model_dir = os.path.join(out, "model")
    if d.rank == 0:
        ckpt.export_model(model, model_dir, labels, vocab, trained_steps=step, run_folder=out)
        log.info(f"model saved to {model_dir} (xe.load({model_dir!r}))")
    return {"step": step, "loss": last_loss, "out": out, "model_dir": model_dir, "best": best}


def _changed_settings(saved: dict, now: dict) -> list[str]:
    """Keys of the run config that changed between the checkpoint and this run, except those a
    resume is expected to change (where to stop, how often to log or save, workers, paths)."""
    expected = {"stop_at_step", "log_every", "save_every", "out", "workers", "threads", "eval_every",
                "eval_batch_size", "strict", "cache", "train_list", "val_list", "labels", "root", "source"}
    return [f"{sec}.{k}" for sec, vals in now.items() for k, v in vals.items()
            if k not in expected and saved.get(sec, {}).get(k, v) != v]


def _validate(cfg, model, labels, tokenizer, d: Dist, log: RunLog, step: int, epoch: int, best: dict) -> dict:
    samples = read_list(cfg.data.val_list, len(labels), cfg.data.root, cfg.data.strict,
                        report=log.warn if d.rank == 0 else None)
    model.eval()
    res = evaluate_model(model, samples, labels, tokenizer, views=cfg.train.eval_views,
                         batch_size=cfg.train.eval_batch_size, workers=cfg.data.workers, device=d.device,
                         rank=d.rank, world=d.world, report=log.warn, strict=cfg.data.strict)
    model.train()
    log.metrics({"step": step, "epoch": epoch + 1, "val_top1": res["top1"], "val_top5": res["top5"],
                 "val_n": res["n"], "views": cfg.train.eval_views})
    log.info(f"epoch {epoch} val top-1 {res['top1']:.2%} top-5 {res['top5']:.2%} on {res['n']} videos")
    if res["top1"] > best.get("top1", -1.0):
        best = {"top1": res["top1"], "top5": res["top5"], "step": step, "epoch": epoch + 1}
        if d.rank == 0:
            ckpt.export_model(model, os.path.join(cfg.train.out, "best"), labels, _vocab_dir(cfg.model.source),
                              trained_steps=step, val_top1=res["top1"], val_top5=res["top5"])
    return best
