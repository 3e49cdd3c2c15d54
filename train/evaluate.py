"""Evaluation: top-1 / top-5 over a list file, 1x1 or 4x3 views; zero-shot; few-shot.

As the official validate() (microsoft/VideoX X-CLIP/main.py): every view of a video is scored
against the whole label set, the softmax scores of its views are averaged, and the video counts
as top-k correct when its label is among the k best classes. Clips are the engine's read_video,
so evaluation sees exactly what `xclip-engine infer` sees.

- Fully supervised: the label set the model was trained on (its own labels).
- Zero-shot: any other label set (e.g. held-out compositions): only the label CSV and the list
  change; the result says how many of the labels the model never trained on.
- Few-shot (the paper's protocol, section 4.3): fine-tune on K clips per class of a training
  list with the reference trainer, then evaluate the fine-tuned model on the test list.
- EVL (a closed-set classifier): clips follow EVL's test-time preprocessing (stride sampling, CLIP
  mean/std; "NxM" views = N temporal clips x M crops, the official K400 test is 3x1); its logits
  are over the classes it was trained on, so every label of the labels CSV must be one of the
  model's own (matched by name, in any order): no zero-shot.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import distributed as dist
from torch.utils.data import DataLoader

from xclip_engine.engine.checkpoint import load_model
from xclip_engine.engine.runtime.device import default_device
from xclip_engine.engine.tokenizer import ClipTokenizer
from xclip_engine.engine.video.transforms import average_views

from .config import RunConfig
from .data import ClipDataset, DataError, collate, few_shot_subset, read_labels, read_list, write_list


def evl_columns(labels: list[str], model_labels: list[str] | None, num_classes: int) -> list[int]:
    """For each label of an evaluation label set, the EVL model's class index: by name when the
    model carries its class names, else by id (the label set must then have the head's size)."""
    if model_labels is None:
        if len(labels) != num_classes:
            raise DataError(f"the labels file has {len(labels)} classes, the EVL model {num_classes} and no class "
                            "names to match them by; EVL classifies its own classes only (no zero-shot)")
        return list(range(num_classes))
    index = {name: i for i, name in enumerate(model_labels)}
    unknown = [lab for lab in labels if lab not in index]
    if unknown:
        raise DataError(f"{len(unknown)} label(s) of the labels file are not classes of this EVL model, e.g. "
                        f"{unknown[0]!r}; EVL is a closed-set classifier (no zero-shot): evaluate it on its own "
                        "classes")
    return [index[lab] for lab in labels]


@torch.inference_mode()
def evaluate_model(model, samples, labels: list[str], tokenizer: ClipTokenizer | None, views: str = "1x1",
                   batch_size: int = 8, workers: int = 0, device=None, rank: int = 0, world: int = 1,
                   report=None, strict: bool = False, model_labels: list[str] | None = None) -> dict:
    """Top-1/top-5 of `model` (a reference XCLIP or EVL) on `samples`. With world > 1 each process
    takes every world-th sample and the counts are summed with all_reduce (a process group must
    exist). EVL: `model_labels` are the model's class names (None: the label set is its classes in
    order); the tokenizer is not used."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    c = model.config
    shard = samples[rank::world]
    evl = getattr(c, "family", "xclip") == "evl"
    if evl:
        from .evl import evl_spec

        columns = torch.as_tensor(evl_columns(labels, model_labels, c.num_classes), device=device)
    loader = DataLoader(ClipDataset(shard, c.num_frames, c.image_size, train=False, views=views,
                                    preprocessing=evl_spec(c) if evl else None),
                        batch_size=batch_size, num_workers=workers, collate_fn=collate)
    if not evl:
        ids = tokenizer(labels, context_length=c.context_length).to(device)
        text = model.encode_text(ids)
    k5 = min(5, len(labels))
    correct1 = correct5 = n = failed = 0
    predictions = []
    for b in loader:
        for index, err in b["failed"]:
            if strict:
                raise DataError(f"{shard[index].where()}: {err} (--strict stops here)")
            failed += 1
            if report is not None:
                report(f"skipped {shard[index].where()}: {err}")
        if b["pixels"] is None:
            continue
        px = b["pixels"]                                                  # [B, V, T, 3, S, S]
        nb, nv = px.shape[:2]
        if evl:   # softmax over the model's classes, then the columns of the labels CSV's
            probs = model(px.flatten(0, 1).to(device)).float().softmax(-1)[:, columns]
        else:
            probs = model(px.flatten(0, 1).to(device), text).float().softmax(-1)   # [B*V, K]
        probs = average_views(probs, [nv] * nb)                            # [B, K], mean of the views
        top = probs.topk(k5, dim=-1).indices.cpu()                         # [B, k]
        y = b["labels"]
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(-1).sum())
        n += nb
        for i, idx in enumerate(b["indices"]):
            predictions.append({"path": shard[idx].path, "label": int(y[i]), "top": top[i].tolist()})
    return _accuracy(correct1, correct5, n, failed, k5, views, predictions, world, device)


@torch.inference_mode()
def evaluate_taps(model, cache, num_labels: int, batch_size: int = 64, device=None, rank: int = 0,
                  world: int = 1) -> dict:
    """Top-1/top-5 of an EVL on a train.evl.TapCache (its clips' cached backbone taps, 1x1 views):
    what evaluate_model gives for the same clips, without running the backbone again. With
    world > 1 the cache holds this process's share and the counts are summed."""
    from .evl import logits_from_taps

    device = torch.device(device) if device is not None else next(model.parameters()).device
    k5 = min(5, num_labels)
    ok = [i for i in range(len(cache)) if i not in cache.errors]
    correct1 = correct5 = 0
    for start in range(0, len(ok), batch_size):
        idx = ok[start:start + batch_size]
        top = logits_from_taps(model, cache.taps[idx].to(device)).float().topk(k5, dim=-1).indices.cpu()
        y = torch.tensor([cache.samples[i].label for i in idx])
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(-1).sum())
    return _accuracy(correct1, correct5, len(ok), len(cache.errors), k5, "1x1", None, world, device)


def _accuracy(correct1, correct5, n, failed, k5, views, predictions, world, device) -> dict:
    """The result dict of an evaluation; with world > 1 the counts are summed over the processes
    (per-video predictions are then left out: each process holds only its share)."""
    if world > 1:
        t = torch.tensor([correct1, correct5, n, failed], dtype=torch.float64,
                         device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        correct1, correct5, n, failed = (int(v) for v in t.tolist())
    return {"top1": correct1 / n if n else 0.0, "top5": correct5 / n if n else 0.0, "topk": k5, "n": n,
            "failed": failed, "views": views, "predictions": predictions if world == 1 else None}


def evaluate(source: str, list_path: str, labels_path: str, root: str | None = None, views: str | None = None,
             batch_size: int = 8, workers: int = 0, device: str | None = None, strict: bool = False,
             report=None, backbone: str | None = None) -> dict:
    """Load a model (any source load_model reads; `backbone`: an official EVL .pth's CLIP) and
    evaluate it on a list file + labels CSV. `views` None: the model's own (X-CLIP 1x1, EVL 3x1)."""
    loaded = load_model(source, backbone=backbone)
    labels = read_labels(labels_path)
    samples = read_list(list_path, len(labels), root, strict, report=report)
    dev = default_device(device)
    model = loaded.model.to(dev).eval()
    if getattr(model.config, "family", "xclip") == "evl":
        from xclip_engine.engine.config import evl_preprocessing

        tokenizer = None
        views = evl_preprocessing(model.config)["views"] if views is None else views
    else:
        views = "1x1" if views is None else views
        tokenizer = ClipTokenizer.from_folder(loaded.vocab_dir) if loaded.vocab_dir else ClipTokenizer()
    res = evaluate_model(model, samples, labels, tokenizer, views=views, batch_size=batch_size, workers=workers,
                         device=dev, report=report, strict=strict, model_labels=loaded.labels)
    trained = set(loaded.labels or [])
    res.update(model=loaded.origin, views=views, list=os.path.abspath(list_path), labels=os.path.abspath(labels_path),
               num_classes=len(labels),
               # labels the model never trained on: all of them for zero-shot, none when fully supervised
               unseen_labels=sum(lab not in trained for lab in labels) if loaded.labels is not None else None)
    return res


def few_shot(source: str, train_list: str, test_list: str, labels_path: str, k: int, cfg: RunConfig | None = None,
             root: str | None = None, views: str = "1x1", seed: int = 0, report=None, quiet: bool = False) -> dict:
    """Fine-tune `source` on K clips per class of `train_list` (run settings from `cfg`, its
    train.out the run folder), then evaluate the result on `test_list`."""
    from .trainer import run  # the trainer imports evaluate_model from here

    cfg = copy.deepcopy(cfg) if cfg is not None else RunConfig()
    labels = read_labels(labels_path)
    root = os.path.abspath(root) if root else os.path.dirname(os.path.abspath(train_list))
    subset = few_shot_subset(read_list(train_list, len(labels), root, report=report), k, seed)
    out = os.path.abspath(cfg.train.out)
    os.makedirs(out, exist_ok=True)
    sub_list = write_list(subset, os.path.join(out, f"few_shot_{k}_train.txt"), root)
    if len(subset) < cfg.train.batch_size * cfg.train.accumulation_steps:
        cfg.train.batch_size, cfg.train.accumulation_steps = len(subset), 1
    cfg.model.source, cfg.model.config = source, {}
    cfg.data.train_list, cfg.data.labels, cfg.data.root, cfg.data.val_list = sub_list, labels_path, root, None
    summary = run(cfg, quiet=quiet)
    res = evaluate(summary["model_dir"], test_list, labels_path, root=root, views=views,
                   batch_size=cfg.train.eval_batch_size, workers=cfg.data.workers, report=report)
    res.update(few_shot_k=k, train_clips=len(subset), train_steps=summary["step"], run_folder=out)
    return res
