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

EVL (model.family evl, or an EVL model.arch; train/evl.py): the same loop trains EVL's decoder,
temporal modules and head on the class logits with the same loss (no text tower: the label set
only fixes the number of classes and is saved with the model), its frozen backbone filled from
model.backbone and left out of the optimizer; training clips follow EVL's stride sampling with a
random start, evaluation EVL's test-time preprocessing.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from xclip_engine.engine.checkpoint import CheckpointError, load_model
from xclip_engine.engine.config import REGISTRY, EVLConfig, XCLIPConfig, config_from_dict, get_entry
from xclip_engine.engine.model import EVL, XCLIP
from xclip_engine.engine.tokenizer import ClipTokenizer

from . import checkpoint as ckpt
from . import evl as evl_train
from .config import ConfigError, RunConfig, write_config
from .data import ClipDataset, DataError, EpochSampler, collate, read_labels, read_list
from .evaluate import evaluate_model, evaluate_taps
from .optim import build_optimizer, build_scheduler, freeze_text, mix_batch, soft_cross_entropy_sum, soft_targets
from .run_env import Dist, RunLog, setup_distributed


class EVLStep(nn.Module):
    """What DDP wraps for EVL: logits [B, K] from the pixels (the label ids are not used)."""

    def __init__(self, model: EVL, from_taps: bool = False):
        super().__init__()
        self.model, self.from_taps = model, from_taps

    def forward(self, pixels, ids=None):
        # with train.cache_taps the batch holds the backbone's cached taps, not pixels
        return evl_train.logits_from_taps(self.model, pixels) if self.from_taps else self.model(pixels)


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


def scratch_family(cfg: RunConfig) -> str:
    """The family a from-scratch run builds: model.family, else its arch's."""
    m = cfg.model
    try:
        arch_family = get_entry(m.arch).family if m.arch else None
    except KeyError as e:
        raise ConfigError(f"model.arch: {e.args[0]}") from None
    family = m.family or arch_family or "xclip"
    if m.arch and arch_family != family and not (family == "evl" and m.arch == "xclip-tiny-test"):
        example = "evl-tiny-test" if family == "evl" else "xclip-tiny-test"
        raise ConfigError(f"model.arch = {m.arch!r} is an {arch_family} architecture but model.family is "
                          f"{family!r}; give an {family} arch (e.g. {example})")
    return family


def scratch_config(cfg: RunConfig, num_labels: int | None = None) -> XCLIPConfig | EVLConfig:
    """The from-scratch model config: model.arch's (for family evl with the default X-CLIP arch:
    evl-tiny-test's) with model.config's fields over it. EVL: num_classes follows the label set
    (`num_labels`) unless model.config gives it, and then the two must agree."""
    family = scratch_family(cfg)
    arch = cfg.model.arch
    if family == "evl" and (not arch or REGISTRY[arch].family != "evl"):
        arch = "evl-tiny-test"
    fields = dict(cfg.model.config)
    if family == "evl" and num_labels is not None:
        given = fields.get("num_classes")
        if given is not None and given != num_labels:
            raise ConfigError(f"model.config.num_classes = {given!r}, but data.labels has {num_labels} classes; "
                              f"set model.config.num_classes: {num_labels} or leave it out")
        fields["num_classes"] = num_labels
    try:
        base = get_entry(arch).config
        return config_from_dict({**base.to_dict(), **fields}, family, origin="model.arch / model.config")
    except (KeyError, ValueError, TypeError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) else str(e)
        raise ConfigError(msg if msg.startswith("model.") else f"model.arch / model.config: {msg}") from None


def _check_family_options(cfg: RunConfig, family: str) -> None:
    m = cfg.model
    if family == "evl":
        for key, value in (("model.freeze_text", m.freeze_text), ("model.logit_scale", m.logit_scale)):
            if value not in (None, False):
                raise ConfigError(f"{key} = {value!r} is an X-CLIP option; EVL has no text tower (remove it)")
    else:
        for key, value in (("model.backbone", m.backbone), ("train.backbone_bf16", cfg.train.backbone_bf16),
                           ("train.cache_taps", cfg.train.cache_taps)):
            if value not in (None, False):
                raise ConfigError(f"{key} = {value!r} is an EVL option; this run trains X-CLIP (set model.family: evl "
                                  "or an EVL model.arch)")


def build_model(cfg: RunConfig, resume_state: dict | None, num_labels: int | None = None,
                log=None) -> XCLIP | EVL:
    """From the checkpoint being resumed, from model.source, or from scratch (seeded); an EVL from
    scratch gets its backbone from model.backbone."""
    torch.manual_seed(cfg.train.seed)
    if resume_state is not None:
        try:
            config = config_from_dict(resume_state["config"], resume_state.get("family", "xclip"),
                                      resume_state["path"])
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        if cfg.model.source is None and config != scratch_config(cfg, num_labels):
            raise CheckpointError(f"{resume_state['path']}: its model config differs from the run config's "
                                  "(model.arch / model.config); resume with the config the run started with")
        _check_family_options(cfg, config.family)
        model = EVL(config) if config.family == "evl" else XCLIP(config)
        model.load_state_dict(resume_state["model"], strict=True)
        return model
    if cfg.model.source:
        if cfg.model.backbone:
            raise ConfigError("model.backbone fills the backbone of an EVL trained from scratch; a model.source "
                              "checkpoint brings its own (remove one of the two)")
        if cfg.model.config:
            raise ConfigError("model.config applies to a model trained from scratch; with model.source "
                              "the architecture comes from the checkpoint (remove one of the two)")
        if cfg.model.logit_scale is not None:
            raise ConfigError("model.logit_scale sets the start of a model trained from scratch; a model.source "
                              "checkpoint brings its own learned scale (remove one of the two)")
        model = load_model(cfg.model.source).model
        family = model.config.family
        if cfg.model.family and cfg.model.family != family:
            raise ConfigError(f"model.family = {cfg.model.family!r}, but model.source = {cfg.model.source!r} is "
                              f"an {family} model")
        _check_family_options(cfg, family)
        if family == "evl" and num_labels is not None and model.config.num_classes != num_labels:
            raise ConfigError(f"model.source = {cfg.model.source!r} classifies {model.config.num_classes} classes, "
                              f"data.labels has {num_labels}; an EVL head is trained for its own label set")
        return model
    config = scratch_config(cfg, num_labels)
    _check_family_options(cfg, config.family)
    if config.family == "evl":
        model = EVL(config)
        if cfg.model.backbone:
            evl_train.load_backbone(model, cfg.model.backbone, cfg.model.backbone_fold_norm, log=log)
        elif log is not None:
            log("model.backbone is not set: the EVL backbone keeps its random initialisation")
        return model
    model = XCLIP(config)
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
        return _Training(cfg, resume, d, quiet).run()
    finally:
        torch.set_num_threads(threads)   # a run called from Python must not change its caller's setting
        if d.active and dist.is_initialized():
            dist.destroy_process_group()


class _Training:
    """One training run, in three parts: `__init__` sets everything up (data, model, optimizer,
    the resumed state), `train_update` does one optimizer update over its micro-batches, and
    `evaluate_and_save` validates and writes the checkpoint where the schedule says so. `run` is
    the epoch loop over them."""

    def __init__(self, cfg: RunConfig, resume: str | None, d: Dist, quiet: bool):
        t, out = cfg.train, cfg.train.out
        self.cfg, self.d, self.out = cfg, d, out
        os.makedirs(out, exist_ok=True)
        if d.rank == 0:
            write_config(cfg, os.path.join(out, "config.yaml"))
        self.log = log = RunLog(out, d, quiet)
        state = ckpt.load_training_checkpoint(resume) if resume else None

        self.labels = labels = read_labels(cfg.data.labels)
        self.samples = samples = read_list(cfg.data.train_list, len(labels), cfg.data.root, cfg.data.strict,
                                           report=log.warn if d.rank == 0 else None)
        if state is not None and state["labels"] != labels:
            raise CheckpointError(f"{state['path']}: trained on a different label set than {cfg.data.labels}")
        self.model = model = build_model(cfg, state, len(labels), log=log.info).to(d.device)
        c = model.config
        self.family = c.family
        if self.family == "evl":
            if cfg.model.gradient_checkpointing:
                raise ConfigError("model.gradient_checkpointing applies to X-CLIP; EVL's backbone keeps no "
                                  "activations (it runs without autograd) and its decoder is small")
            evl_train.freeze_backbone(model)
            evl_train.backbone_in_bf16(model, t.backbone_bf16)
        else:
            model.visual.gradient_checkpointing = cfg.model.gradient_checkpointing
            if cfg.model.freeze_text:
                freeze_text(model)
        self.sampler = EpochSampler(len(samples), t.batch_size, t.accumulation_steps, d.rank, d.world, t.seed)
        self.upe = upe = self.sampler.updates_per_epoch
        if upe == 0:
            raise DataError(f"{cfg.data.train_list}: {len(samples)} usable videos do not fill one update of "
                            f"{t.batch_size} clips x {t.accumulation_steps} accumulation steps x {d.world} "
                            "process(es); lower train.batch_size or add videos")
        self.total = total = t.epochs * upe
        o = cfg.optim
        self.optimizer = build_optimizer(model, o.lr, o.new_lr_mult, o.weight_decay, o.betas, o.eps)
        self.scheduler = build_scheduler(self.optimizer, total, round(o.warmup_epochs * upe), o.min_lr_ratio)
        self.amp = _autocast(t.amp, d.device)   # validates amp against the device before any work
        self.scaler = None
        if t.amp == "fp16":   # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range
            self.scaler = (torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler")
                           else torch.cuda.amp.GradScaler())
        self.step, self.epoch, self.pos, self.best = 0, 0, 0, {}
        if state is not None:
            self._restore(state)
        self.tap_cache = self.family == "evl" and t.cache_taps
        self.step_module = (EVLStep(model, from_taps=self.tap_cache) if self.family == "evl"
                            else TrainStep(model, frozen_text=cfg.model.freeze_text))
        if d.active:
            self.step_module = nn.parallel.DistributedDataParallel(
                self.step_module, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
        if self.family == "evl":   # no text tower: the label set is the head's classes
            self.vocab, self.tokenizer, self.ids = None, None, None
        else:
            self.vocab = _vocab_dir(cfg.model.source)
            self.tokenizer = ClipTokenizer.from_folder(self.vocab) if self.vocab else ClipTokenizer()
            self.ids = self.tokenizer(labels, context_length=c.context_length).to(d.device)
        self.val_cache = None
        if self.tap_cache:
            t_cache = time.time()
            self.dataset = evl_train.TapCache(model, samples, evl_train.evl_spec(c), batch_size=t.eval_batch_size,
                                              workers=cfg.data.workers)
            log.info(f"train.cache_taps: the backbone's taps of {len(samples)} training clips computed once "
                     f"({self.dataset.nbytes / 2**30:.2f} GiB) in {time.time() - t_cache:.0f} s")
        else:
            self.dataset = ClipDataset(samples, c.num_frames, c.image_size, train=True, aug=cfg.data, seed=t.seed,
                                       preprocessing=evl_train.evl_spec(c) if self.family == "evl" else None)
        if cfg.data.cache and not self.tap_cache:
            t_cache = time.time()
            nbytes = self.dataset.cache_frames(threads=max(1, cfg.data.workers))
            log.info(f"data.cache: decoded {len(samples)} videos into memory ({nbytes / 2**30:.2f} GiB) "
                     f"in {time.time() - t_cache:.0f} s")
        ntrain = sum(p.numel() for p in model.parameters() if p.requires_grad)
        nfrozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        frozen = f" ({nfrozen / 1e6:.2f} M frozen)" if nfrozen else ""
        log.info(f"training {ntrain / 1e6:.2f} M parameters of {self.family}{frozen} on {len(samples)} videos, "
                 f"{len(labels)} classes, "
                 f"{d.world} process(es) on {d.device}, global batch {t.batch_size * d.world * t.accumulation_steps}, "
                 f"{upe} updates per epoch, {total} in all; run folder {out}")
        self.reported: set = set()
        self.window = self._new_window()
        self.last_loss = None

    def _restore(self, state: dict) -> None:
        """Optimizer, schedule, scaler, RNG and position from the checkpoint being resumed."""
        tr = state["train"]
        self.optimizer.load_state_dict(tr["optimizer"])
        self.scheduler.load_state_dict(tr["scheduler"])
        if self.scaler is not None and tr["scaler"]:
            self.scaler.load_state_dict(tr["scaler"])
        ckpt.set_rng_state(tr["rng"])
        self.step, self.epoch, self.pos, self.best = tr["step"], tr["epoch"], tr["update_in_epoch"], dict(tr["best"])
        self.log.info(f"resumed from {state['path']} at update {self.step} (epoch {self.epoch}, "
                      f"update {self.pos} of it)")
        changed = _changed_settings(tr["run_config"], self.cfg.to_dict())
        if changed:
            self.log.warn(f"resuming with settings that differ from the checkpoint's run: {', '.join(changed)}; "
                          "the learning-rate schedule continues as it was saved")

    @staticmethod
    def _new_window() -> dict:
        return {"loss": 0.0, "clips": 0, "skipped": 0, "t0": time.time()}

    def _stop_reached(self) -> bool:
        return self.cfg.train.stop_at_step is not None and self.step >= self.cfg.train.stop_at_step

    def run(self) -> dict:
        t, cfg = self.cfg.train, self.cfg
        stop = self._stop_reached()
        if stop:
            self.log.info(f"already at update {self.step} (train.stop_at_step {t.stop_at_step}): nothing to train")
        self.model.train()
        while self.epoch < t.epochs and not stop:
            self.sampler.set_epoch(self.epoch, self.pos)
            # Cached clips need no decoding, and augmenting a cached clip is cheap: the main process does
            # it. Forking workers over gigabytes of cached arrays stalled them (seen: a worker idle for
            # minutes), and their copies would only compete with the model for the cores.
            loader = DataLoader(self.dataset, batch_size=t.batch_size, sampler=self.sampler,
                                num_workers=0 if cfg.data.cache or self.tap_cache else cfg.data.workers,
                                collate_fn=collate, pin_memory=self.d.device.type == "cuda")
            batches = iter(loader)
            for upd in range(self.pos, self.upe):
                self.train_update(batches)
                done_epoch = upd + 1 == self.upe
                stop = self._stop_reached()
                if self.step % t.log_every == 0 or done_epoch or stop:
                    self._log_window(upd)
                if stop or done_epoch or (t.save_every and self.step % t.save_every == 0):
                    self.evaluate_and_save(upd, done_epoch)
                if stop:
                    break
            del batches, loader
            self.epoch, self.pos = self.epoch + 1, 0
        return self._finish()

    def train_update(self, batches) -> None:
        """One optimizer update: accumulation_steps micro-batches from `batches`, the loss of each
        normalised by the clips of the whole global window, then the optimizer and schedule step."""
        t, d, c = self.cfg.train, self.d, self.model.config
        micro = [next(batches) for _ in range(t.accumulation_steps)]
        self._report_failures(micro)
        local = sum(len(b["indices"]) for b in micro)
        count = d.all_sum([local])[0]
        for m, b in enumerate(micro):
            sync = contextlib.nullcontext() if not d.active or m == len(micro) - 1 else self.step_module.no_sync()
            if b["pixels"] is None:   # every clip of this micro-batch failed: keep DDP in step
                pixels = (torch.zeros(1, *self.dataset.taps.shape[1:]) if self.tap_cache
                          else torch.zeros(1, c.num_frames, 3, c.image_size, c.image_size))
            else:
                pixels = b["pixels"]
                targets = soft_targets(b["labels"], len(self.labels), t.label_smoothing)
                if t.mixup > 0 or t.cutmix > 0:
                    rng = np.random.default_rng([t.seed, self.step, m, d.rank])
                    pixels, targets = mix_batch(pixels, targets, rng, t.mixup, t.cutmix, t.mix_switch_prob)
            with sync:
                with self.amp:
                    logits = self.step_module(pixels.to(d.device, non_blocking=True), self.ids)
                if b["pixels"] is None:
                    loss_sum = logits.float().sum() * 0.0
                else:
                    loss_sum = soft_cross_entropy_sum(logits, targets.to(d.device))
                loss = loss_sum * (d.world / max(count, 1.0))
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            self.window["loss"] += float(loss_sum.detach())
        self.window["clips"] += local
        self.window["skipped"] += sum(len(b["failed"]) for b in micro)
        if count > 0:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        else:
            self.log.warn(f"update {self.step}: every clip of the global batch failed to decode; update skipped")
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def _report_failures(self, micro: list) -> None:
        for b in micro:
            for index, err in b["failed"]:
                where = self.samples[index].where()
                if self.cfg.data.strict:
                    raise DataError(f"{where}: {err} (--strict stops here; without it the video is skipped)")
                if where not in self.reported:
                    self.reported.add(where)
                    self.log.warn(f"skipped {where}: {err}")

    def _log_window(self, upd: int) -> None:
        """The mean loss and speed since the last row, summed over the processes."""
        loss_total, clips, skipped = self.d.all_sum([self.window["loss"], self.window["clips"],
                                                     self.window["skipped"]])
        elapsed = max(time.time() - self.window["t0"], 1e-9)
        self.last_loss = loss_total / max(clips, 1)
        lrs = {g["group"]: g["lr"] for g in self.optimizer.param_groups}
        row = {"step": self.step, "epoch": self.epoch + (upd + 1) / self.upe, "loss": self.last_loss,
               "lr": lrs.get("clip", lrs.get("clip_no_decay")),
               "lr_new": lrs.get("new", lrs.get("new_no_decay")),
               "clips_per_s": clips / elapsed, "skipped": int(skipped), "time": time.time()}
        self.log.metrics(row)
        self.log.info(f"step {self.step}/{self.total} epoch {self.epoch} loss {self.last_loss:.4f} "
                      f"lr {row['lr'] or 0:.3g} clips/s {row['clips_per_s']:.1f}"
                      + (f" skipped {int(skipped)}" if skipped else ""))
        self.window = self._new_window()

    def evaluate_and_save(self, upd: int, done_epoch: bool) -> None:
        """At an epoch's end validate (when a val list is set and eval_every says so), then write
        the checkpoint that resumes after update `upd` (rank 0)."""
        t, cfg = self.cfg.train, self.cfg
        if done_epoch and cfg.data.val_list and ((self.epoch + 1) % t.eval_every == 0 or self.epoch + 1 == t.epochs):
            if self.tap_cache and self.val_cache is None:
                t_cache = time.time()
                samples = read_list(cfg.data.val_list, len(self.labels), cfg.data.root, cfg.data.strict,
                                    report=self.log.warn if self.d.rank == 0 else None)
                self.val_cache = evl_train.TapCache(self.model, samples[self.d.rank::self.d.world],
                                                    evl_train.evl_spec(self.model.config),
                                                    batch_size=t.eval_batch_size, workers=cfg.data.workers)
                self.log.info(f"train.cache_taps: the taps of {len(samples)} validation clips computed in "
                              f"{time.time() - t_cache:.0f} s")
            self.best = _validate(cfg, self.model, self.labels, self.tokenizer, self.d, self.log, self.step,
                                  self.epoch, self.best, self.val_cache)
        next_epoch, next_pos = (self.epoch + 1, 0) if done_epoch else (self.epoch, upd + 1)
        if self.d.rank == 0:
            ckpt.save_training_checkpoint(os.path.join(self.out, ckpt.CHECKPOINT_NAME), self.model, self.labels,
                                          self.optimizer, self.scheduler, self.scaler, step=self.step,
                                          epoch=next_epoch, update_in_epoch=next_pos,
                                          run_config=cfg.to_dict(), best=self.best)

    def _finish(self) -> dict:
        model_dir = os.path.join(self.out, "model")
        if self.d.rank == 0:
            ckpt.export_model(self.model, model_dir, self.labels, self.vocab, trained_steps=self.step,
                              run_folder=self.out, **_model_info(self.model))
            self.log.info(f"model saved to {model_dir} (xe.load({model_dir!r}))")
        return {"step": self.step, "loss": self.last_loss, "out": self.out, "model_dir": model_dir,
                "best": self.best}


def _model_info(model) -> dict:
    """Extra metadata saved with a model: an EVL states its test-time preprocessing."""
    if getattr(model.config, "family", "xclip") == "evl":
        return {"preprocessing": evl_train.evl_spec(model.config)}
    return {}


def _changed_settings(saved: dict, now: dict) -> list[str]:
    """Keys of the run config that changed between the checkpoint and this run, except those a
    resume is expected to change (where to stop, how often to log or save, workers, paths)."""
    expected = {"stop_at_step", "log_every", "save_every", "out", "workers", "threads", "eval_every",
                "eval_batch_size", "strict", "cache", "train_list", "val_list", "labels", "root", "source"}
    return [f"{sec}.{k}" for sec, vals in now.items() for k, v in vals.items()
            if k not in expected and saved.get(sec, {}).get(k, v) != v]


def _validate(cfg, model, labels, tokenizer, d: Dist, log: RunLog, step: int, epoch: int, best: dict,
              val_cache=None) -> dict:
    model.eval()
    if val_cache is not None:   # EVL with train.cache_taps: 1x1 views from the cached taps
        res = evaluate_taps(model, val_cache, len(labels), cfg.train.eval_batch_size, d.device, d.rank, d.world)
    else:
        samples = read_list(cfg.data.val_list, len(labels), cfg.data.root, cfg.data.strict,
                            report=log.warn if d.rank == 0 else None)
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
                              trained_steps=step, val_top1=res["top1"], val_top5=res["top5"], **_model_info(model))
    return best
