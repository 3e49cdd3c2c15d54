"""`xclip-engine`: a thin command line over the public API (xclip_engine.engine.api).

Exit status: 0 when every input succeeded, 1 when some inputs failed (after answering for all
the others), 2 for a usage error (bad option, unreadable model, empty label list).
"""

from __future__ import annotations

import csv
import json
import os
import sys

import click

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".3gp", ".ogv", ".ts", ".mts"}


def expand_inputs(items) -> list[str]:
    """Files as given; directories walked (sorted) for files with a video extension."""
    out = []
    for item in items:
        if os.path.isdir(item):
            found = []
            for root, dirs, files in os.walk(item):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files)
                          if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS]
            out += found or [item]   # an empty folder is reported, not silently dropped
        else:
            out.append(item)
    return out


def _usage_error(msg: str):
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xclip-engine")
def main():
    """X-CLIP video recognition: classify videos with your own labels."""


@main.command("models")
def models_cmd():
    """List the model names of the registry."""
    from .config import REGISTRY

    for name, e in REGISTRY.items():
        c = e.config
        click.echo(f"{name:36s} {c.num_frames:2d} frames {c.image_size} px  {e.hub_id or '-':45s} {e.note}")


@main.command("infer")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "-m", "model_src", default=None,
              help="Registry name, transformers X-CLIP folder, official VideoX .pth, our checkpoint, or an "
                   "export folder (with --backend onnxruntime). Default: the bundled demonstration model.")
@click.option("--arch", default=None, help="Registry name whose architecture an official .pth has.")
@click.option("--labels", "labels_text", default=None, help='Comma-separated labels: "cooking, dancing".')
@click.option("--labels-file", default=None,
              help="One label per line, an id,name CSV, or a bundled set: k400, k600, hmdb51, ucf101.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--views", default="1x1", show_default=True, type=click.Choice(["1x1", "4x3"]),
              help="Test views: 1x1 (one clip, center crop) or 4x3 (4 clips x 3 crops, scores averaged).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json", "csv"]))
@click.option("--output", "-o", default=None, help="Write results to this file instead of stdout.")
@click.option("--backend", default="reference", show_default=True,
              type=click.Choice(["reference", "triton", "onnxruntime", "tensorrt"]))
@click.option("--precision", default=None, type=click.Choice(["fp32", "fp16", "int8"]),
              help="Which graphs of an export folder to run (backends onnxruntime / tensorrt).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present, else cpu).")
def infer_cmd(inputs, model_src, arch, labels_text, labels_file, topk, views, batch_size, fmt, output,
              backend, precision, device):
    """Classify VIDEOS (files or folders of videos) against a label set."""
    from .api import load
    from .checkpoint import CheckpointError
    from .labels import load_labels, parse_labels

    if labels_text is not None and labels_file is not None:
        _usage_error("give either --labels or --labels-file, not both")
    try:
        labels = (parse_labels(labels_text) if labels_text is not None
                  else load_labels(labels_file) if labels_file is not None else None)
    except ValueError as e:
        _usage_error(str(e))
    try:
        model = load(model_src, backend=backend, device=device, arch=arch, precision=precision)
    except (CheckpointError, KeyError, ValueError, NotImplementedError, OSError) as e:
        _usage_error(f"cannot load the model {model_src or '(bundled default)'}: {e}")
    if model_src is None:
        click.echo("using the bundled demonstration model (shapes data set); pass --model for a real X-CLIP",
                   err=True)
    if labels is None and not model.labels:
        _usage_error("no labels: pass --labels \"a, b, c\" or --labels-file FILE (or k400, k600, hmdb51, ucf101)")

    paths = expand_inputs(inputs)
    out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
    failed = 0
    try:
        from tqdm import tqdm

        writer = _writer(fmt, out, topk)
        results = model.classify_iter(paths, labels, topk=topk, views=views, batch_size=batch_size)
        with tqdm(total=len(paths), unit="video", file=sys.stderr, disable=len(paths) <= 3,
                  desc="infer") as bar:
            for pred in results:
                if os.path.isdir(pred.path):
                    pred.error = f"{pred.path}: a folder with no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})"
                failed += pred.error is not None
                writer(pred)
                bar.update(1)
    finally:
        if output:
            out.close()
    if failed:
        click.echo(f"{failed} of {len(paths)} inputs failed; see their errors above", err=True)
    sys.exit(1 if failed else 0)


def _writer(fmt, out, topk):
    if fmt == "json":
        def write(p):
            out.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")
            out.flush()
        return write
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(["path", "rank", "label", "score", "error"])

        def write(p):
            if p.error:
                w.writerow([p.path, "", "", "", p.error])
            for rank, (label, score) in enumerate(p.top, 1):
                w.writerow([p.path, rank, label, f"{score:.6f}", ""])
            out.flush()
        return write

    def write(p):
        if p.error:
            out.write(f"{p.path}\n  ERROR: {p.error}\n")
        else:
            out.write(f"{p.path}\n" + "".join(f"  {score:7.2%}  {label}\n" for label, score in p.top))
        out.flush()
    return write


def _register_commands():
    # heavy imports stay inside each command's body, so `xclip-engine --help` stays fast
    from xclip_engine.export.cli import export_cmd
    from xclip_engine.train.cli import eval_cmd, train_cmd
    from xclip_engine.train.cli_dataset import make_dataset_cmd

    for cmd in (export_cmd, train_cmd, eval_cmd, make_dataset_cmd):
        main.add_command(cmd)


_register_commands()

if __name__ == "__main__":
    main()
