"""The trainer's run configuration: dataclass sections, YAML/JSON files, `key.sub=value` overrides.

A run config has four sections (model, data, optim, train). Defaults follow the official X-CLIP
fine-tuning recipe (microsoft/VideoX X-CLIP/utils/config.py and configs/k400/*.yaml: AdamW at
8e-6 with 10x for the new modules, weight decay 0.001, 30 epochs with 5 of warm-up, label
smoothing 0.1, mixup 0.8 / cutmix 1.0 switched with p 0.5, colour jitter p 0.8, grayscale
p 0.2). Every run writes the resolved config (absolute paths, every field) into its folder, so
`xclip-engine train RUN/config.yaml` repeats it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import yaml

from xclip_engine.engine.io.atomic import atomic_write


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the key or file and what to do."""


@dataclass
class ModelSection:
    source: str | None = None        # checkpoint to fine-tune (any format load_model reads); None: from scratch
    arch: str = "xclip-tiny-test"    # registry name whose config a from-scratch model starts from
    config: dict = field(default_factory=dict)  # XCLIPConfig fields overriding `arch` (from scratch only)
    gradient_checkpointing: bool = False
    freeze_text: bool = False        # the official recipe's FIX_TEXT; off so that the text tower trains
    logit_scale: float | None = None  # from scratch: exp(logit_scale) to start from (None: CLIP's 1/0.07)
    # EVL (train/evl.py): family "evl" (or an EVL `arch`, e.g. evl-tiny-test) trains EVL's decoder and head
    family: str | None = None        # xclip | evl; None: the family of `arch` (or of `source`)
    backbone: str | None = None      # EVL from scratch: checkpoint (or `default`) whose CLIP ViT is the frozen backbone
    backbone_fold_norm: bool = True  # an X-CLIP backbone: fold its ImageNet 0..255 statistics into its weights


@dataclass
class DataSection:
    train_list: str = ""             # official list format: `relative/path.mp4 label_id` per line
    val_list: str | None = None      # evaluated after every `train.eval_every` epochs, picks the best model
    labels: str = ""                 # `id,name` CSV
    root: str | None = None          # folder the list paths are relative to; None: the list file's folder
    workers: int = 2                 # DataLoader worker processes per training process
    strict: bool = False             # stop at the first missing or corrupt video instead of skipping it
    cache: bool = False              # decode every training clip once into memory (small data sets only:
                                     # T x H x W x 3 bytes per frame, e.g. 24 x 64 x 64 x 3 = 295 KB a clip)
    # training augmentation (official train pipeline, VideoX X-CLIP/datasets/build.py)
    crop_scales: list = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    flip: float = 0.5
    color_jitter: float = 0.8        # probability of jittering a clip
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale: float = 0.2           # probability


@dataclass
class OptimSection:
    lr: float = 8e-6                 # CLIP-initialised parts
    new_lr_mult: float = 10.0        # message_*, mit.*, prompts_* get lr x this (official: 10)
    weight_decay: float = 0.001
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    warmup_epochs: float = 5.0
    min_lr_ratio: float = 0.01       # the cosine ends at lr x this (official lr_min = LR / 100)


@dataclass
class TrainSection:
    out: str = "runs/xclip"          # run folder: config.yaml, metrics.jsonl, train.log, last.pt, model/
    epochs: int = 30
    batch_size: int = 8              # clips per process per micro-batch; global batch = this x processes
    accumulation_steps: int = 1
    label_smoothing: float = 0.1
    mixup: float = 0.8               # Beta(alpha, alpha) of mixup; 0 turns mixing off altogether
    cutmix: float = 1.0              # Beta(alpha, alpha) of cutmix; 0: mixup only
    mix_switch_prob: float = 0.5     # probability of cutmix instead of mixup for a batch
    amp: str = "none"                # none | bf16 (CPU or GPU) | fp16 (GPU, with a GradScaler)
    device: str = "auto"             # auto | cpu | cuda
    seed: int = 1024
    stop_at_step: int | None = None  # stop after this many updates (the schedule still spans `epochs`)
    log_every: int = 10              # updates between log lines / metrics rows
    save_every: int = 0              # updates between checkpoints (0: at the end of each epoch only)
    eval_every: int = 1              # epochs between evaluations on data.val_list
    eval_views: str = "1x1"
    eval_batch_size: int = 8
    threads: int | None = None       # torch CPU threads per process (None: torch's default)
    backbone_bf16: bool = False      # EVL: run the frozen backbone under bf16 autocast (decoder and head in fp32)
    cache_taps: bool = False         # EVL: the frozen backbone's taps of every clip computed once (train and val):
                                     # epochs run the decoder only; clips are then unaugmented test-time clips


SECTIONS = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "train": TrainSection}


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, origin: str = "config") -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{origin}: expected a mapping with sections {', '.join(SECTIONS)}, "
                              f"got {type(d).__name__}")
        unknown = sorted(set(d) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{origin}: unknown section(s) {unknown}; sections are {', '.join(SECTIONS)}")
        parts = {}
        for name, section in SECTIONS.items():
            values = d.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: section {name!r} must be a mapping, got {values!r}")
            known = {f.name for f in dataclasses.fields(section)}
            bad = sorted(set(values) - known)
            if bad:
                raise ConfigError(f"{origin}: unknown key(s) {[f'{name}.{k}' for k in bad]}; "
                                  f"keys of {name!r}: {', '.join(sorted(known))}")
            fields = {f.name: f for f in dataclasses.fields(section)}
            parts[name] = section(**{k: _coerce(f"{name}.{k}", fields[k].type, v, origin) for k, v in values.items()})
        cfg = cls(**parts)
        cfg.validate(origin)
        return cfg

    def validate(self, origin: str = "config") -> None:
        t, o, d = self.train, self.optim, self.data

        def need(ok: bool, key: str, what: str):
            if not ok:
                raise ConfigError(f"{origin}: {key} = {_get(self.to_dict(), key)!r}: {what}")

        for key in ("train.epochs", "train.batch_size", "train.accumulation_steps", "train.log_every",
                    "train.eval_every", "train.eval_batch_size"):
            v = _get(self.to_dict(), key)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, key, "must be an integer >= 1")
        need(isinstance(t.save_every, int) and t.save_every >= 0, "train.save_every", "must be an integer >= 0")
        need(t.stop_at_step is None or (isinstance(t.stop_at_step, int) and t.stop_at_step >= 1),
             "train.stop_at_step", "must be null or an integer >= 1")
        need(t.amp in ("none", "bf16", "fp16"), "train.amp", "must be none, bf16 or fp16")
        need(t.device in ("auto", "cpu", "cuda"), "train.device", "must be auto, cpu or cuda")
        need(0.0 <= t.label_smoothing < 1.0, "train.label_smoothing", "must be in [0, 1)")
        for key in ("train.mixup", "train.cutmix", "optim.weight_decay", "optim.warmup_epochs"):
            need(float(_get(self.to_dict(), key)) >= 0, key, "must be >= 0")
        need(0.0 <= t.mix_switch_prob <= 1.0, "train.mix_switch_prob", "must be a probability")
        need(float(o.lr) > 0 and float(o.new_lr_mult) > 0, "optim.lr", "lr and new_lr_mult must be > 0")
        need(0.0 <= o.min_lr_ratio <= 1.0, "optim.min_lr_ratio", "must be in [0, 1]")
        need(isinstance(o.betas, (list, tuple)) and len(o.betas) == 2, "optim.betas", "must be two numbers")
        need(isinstance(d.workers, int) and d.workers >= 0, "data.workers", "must be an integer >= 0")
        need(len(d.crop_scales) >= 1 and all(0 < float(s) <= 1 for s in d.crop_scales),
             "data.crop_scales", "must be a list of fractions in (0, 1]")
        for key in ("data.flip", "data.color_jitter", "data.grayscale"):
            need(0.0 <= float(_get(self.to_dict(), key)) <= 1.0, key, "must be a probability")
        need(0.0 <= float(d.hue) <= 0.5, "data.hue", "must be in [0, 0.5] (a fraction of the hue circle)")
        need(isinstance(self.model.config, dict), "model.config", "must be a mapping of XCLIPConfig fields")
        m = self.model
        need(m.family in (None, "xclip", "evl"), "model.family", "must be xclip, evl or null (the arch's family)")
        need(isinstance(t.backbone_bf16, bool), "train.backbone_bf16", "must be true or false")
        need(isinstance(t.cache_taps, bool), "train.cache_taps", "must be true or false")
        need(not t.cache_taps or (float(t.mixup) == 0 and float(t.cutmix) == 0), "train.cache_taps",
             "caches unmixed clips: set train.mixup=0 and train.cutmix=0 with it")
        need(isinstance(m.backbone_fold_norm, bool), "model.backbone_fold_norm", "must be true or false")
        need(m.backbone is None or (isinstance(m.backbone, str) and m.backbone.strip() != ""), "model.backbone",
             "must be a checkpoint path (or null)")
        need(self.model.logit_scale is None or 1.0 <= float(self.model.logit_scale) <= 100.0, "model.logit_scale",
             "must be in [1, 100] (CLIP clamps the scale at 100; its init is 1/0.07 = 14.3)")

    def require_data(self, origin: str = "config") -> None:
        """The fields a training run cannot do without."""
        for key in ("data.train_list", "data.labels"):
            if not _get(self.to_dict(), key):
                raise ConfigError(f"{origin}: {key} is not set; give it in the config file or as "
                                  f"`{key}=PATH` on the command line")

    def resolved(self) -> RunConfig:
        """A copy with every path made absolute (what a run writes into its folder)."""
        d = self.to_dict()
        for key in ("data.train_list", "data.val_list", "data.labels", "data.root", "train.out"):
            v = _get(d, key)
            # data.labels may name a bundled set (k400, hmdb51, ...), which is not a path
            if v and (key != "data.labels" or os.path.exists(os.path.expanduser(v))):
                _set(d, key, os.path.abspath(os.path.expanduser(v)))
        for key in ("source", "backbone"):
            src = d["model"][key]
            if src and os.path.exists(src):    # a registry name stays a name
                d["model"][key] = os.path.abspath(src)
        return RunConfig.from_dict(d)


def _coerce(key: str, type_name: str, value, origin: str):
    """Numbers as the field wants them. PyYAML reads `1e-4` (no dot) as a string, so numeric
    strings become floats here rather than failing later inside the optimizer."""
    if value is None or "float" not in type_name or isinstance(value, bool):
        return value
    if isinstance(value, (int, float, str)):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{origin}: {key} = {value!r}: must be a number")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def _set(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
    d[parts[-1]] = value


def read_config_file(path: str) -> dict:
    """A YAML or JSON file -> nested dict (JSON is read by the YAML parser too, but .json files
    go through json so that its errors name the line)."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        d = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} ({e})") from None
    return d or {}


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """`section.key=value` strings (value parsed as YAML: 1e-4, true, null, [1, 0.5]) onto `d`."""
    d = json.loads(json.dumps(d))   # a deep copy that also proves the dict is plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or "." not in key:
            raise ConfigError(f"override {item!r}: write it as section.key=value, e.g. train.epochs=10 "
                              f"(sections: {', '.join(SECTIONS)})")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse the value ({e})") from None
        _set(d, key, value)
    return d


def load_run_config(path: str | None, overrides: list[str] = ()) -> RunConfig:
    """The config file (or the defaults when `path` is None) with the overrides applied."""
    d = read_config_file(path) if path else {}
    d = apply_overrides(d, list(overrides))
    return RunConfig.from_dict(d, origin=path or "config")


def write_config(cfg: RunConfig, path: str) -> str:
    return atomic_write(path, lambda f: yaml.safe_dump(cfg.to_dict(), f, sort_keys=False), text=True)
