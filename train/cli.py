"""`xclip-engine train` and `xclip-engine eval`: thin click commands over train.trainer / train.evaluate.

    xclip-engine train CONFIG [section.key=value ...] [--resume RUN_OR_PT] [--strict]
    torchrun --nproc_per_node 2 -m xclip_engine.train.cli train CONFIG ...     # several processes
    xclip-engine eval MODEL --list test.txt --labels labels.csv [--views 4x3]
    xclip-engine eval MODEL --list test.txt --labels labels.csv --few-shot 2 --train-list train.txt

Exit status: 0 on success; 1 when the data stopped the run (a bad list line, a label id outside
the label set, a missing or corrupt video under --strict); 2 for a usage error (a bad config key
or value, an unreadable checkpoint).
"""

from __future__ import annotations

import json
import sys

import click

from .config import ConfigError, load_run_config


def _errors():
    """The errors a command turns into an exit status. Imported when a command runs, not when the
    CLI starts: they live beside torch (checkpoint loading, the data set), which takes seconds to
    import, and `xclip-engine --help` should not wait for it."""
    from xclip_engine.engine.checkpoint import CheckpointError

    from .data import DataError

    return ConfigError, DataError, CheckpointError


def _fail(e: Exception) -> None:
    from .data import DataError

    click.echo(f"error: {e}", err=True)
    sys.exit(1 if isinstance(e, DataError) else 2)


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", default=None, help="Continue a run: its folder (last.pt in it) or a checkpoint .pt.")
@click.option("--strict", is_flag=True, help="Stop at the first missing or corrupt video instead of skipping it.")
@click.option("--quiet", "-q", is_flag=True, help="No log lines on stderr (train.log and metrics.jsonl still written).")
def train_cmd(config, overrides, resume, strict, quiet):
    """Train or fine-tune X-CLIP as CONFIG (YAML/JSON) says, with section.key=value overrides.

    Example: xclip-engine train train/configs/shapes_small.yaml train.epochs=5 train.out=runs/try
    """
    from .trainer import run

    errors = _errors()
    try:
        cfg = load_run_config(config, overrides)
        if strict:
            cfg.data.strict = True
        summary = run(cfg, resume=resume, quiet=quiet)
    except errors as e:
        _fail(e)
    click.echo(f"trained {summary['step']} updates; model: {summary['model_dir']}")


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.argument("overrides", nargs=-1)
@click.option("--backbone", default=None, metavar="CLIP",
              help="EVL: the CLIP backbone of an official EVL .pth (as for infer).")
@click.option("--list", "list_path", required=True, help="Test list, official format: `path label_id` per line.")
@click.option("--labels", "labels_path", required=True, help="Labels CSV (id,name) that the list's ids refer to.")
@click.option("--root", default=None, help="Folder the list paths are relative to (default: the list's folder).")
@click.option("--views", default=None, metavar="NxM",
              help="N clips x M crops: 1x1, 4x3 (X-CLIP's multi-view test), 3x1 (EVL's). Default: the model's own "
                   "(X-CLIP 1x1, EVL 3x1).")
@click.option("--batch-size", default=8, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="Decoding processes.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when present).")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable video instead of skipping it.")
@click.option("--few-shot", "few_shot_k", type=int, default=None,
              help="Fine-tune MODEL on K clips per class of --train-list first, then evaluate.")
@click.option("--train-list", default=None, help="Few-shot: the list the K clips per class are drawn from.")
@click.option("--config", "config_path", default=None, help="Few-shot: run config for the fine-tuning.")
@click.option("--seed", default=0, show_default=True, type=int, help="Few-shot: which K clips are drawn.")
@click.option("--json", "json_out", default=None, help="Also write the result as JSON to this file.")
def eval_cmd(model, overrides, backbone, list_path, labels_path, root, views, batch_size, workers, device, strict,
             few_shot_k, train_list, config_path, seed, json_out):
    """Top-1/top-5 accuracy of MODEL on a test list (fully supervised, zero-shot, or few-shot).

    Zero-shot: pass a labels CSV the model was not trained on. Few-shot: --few-shot K --train-list
    FILE [--config CONFIG] [section.key=value ...] fine-tunes first (run folder: train.out).
    """
    from .evaluate import evaluate, few_shot

    report = lambda msg: click.echo(f"warning: {msg}", err=True)
    errors = (*_errors(), ValueError)
    try:
        if few_shot_k is not None:
            if not train_list:
                raise ConfigError("--few-shot K needs --train-list FILE (the clips to draw K per class from)")
            if backbone is not None:
                raise ConfigError("--few-shot trains from MODEL alone; for an official EVL .pth with a separate "
                                  "backbone, save it as one model first (xe.save_model) and pass that")
            cfg = load_run_config(config_path, list(overrides))
            cfg.data.workers = workers
            res = few_shot(model, train_list, list_path, labels_path, few_shot_k, cfg, root=root, views=views,
                           seed=seed, report=report)
        else:
            if overrides:
                raise ConfigError(f"unexpected arguments {list(overrides)}; key=value overrides apply to "
                                  "--few-shot runs only")
            res = evaluate(model, list_path, labels_path, root=root, views=views, batch_size=batch_size,
                           workers=workers, device=device, strict=strict, report=report, backbone=backbone)
    except errors as e:
        _fail(e)
    unseen = res.get("unseen_labels")
    mode = (f"few-shot K={few_shot_k}" if few_shot_k is not None else "evaluation" if unseen is None
            else f"zero-shot ({unseen} of {res['num_classes']} labels unseen in training)" if unseen
            else "supervised")
    skipped = f", {res['failed']} skipped" if res["failed"] else ""
    click.echo(f"{mode}: top-1 {res['top1']:.2%}  top-{res['topk']} {res['top5']:.2%}  on {res['n']} videos "
               f"({res.get('views') or views} views{skipped})")
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in res.items() if k != "predictions"} | {"mode": mode,
                      "predictions": res.get("predictions")}, f, indent=2)


@click.group()
def main():
    """Trainer commands, for `python -m xclip_engine.train.cli` and torchrun."""


main.add_command(train_cmd)
main.add_command(eval_cmd)

if __name__ == "__main__":
    main()
