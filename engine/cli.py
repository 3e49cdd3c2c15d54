"""`xclip-engine`: a thin command line over the public API (engine/api.py, and `xe.infer` in
engine/pipeline.py, which does all the work of `infer`).

Exit status: 0 when every input succeeded, 1 when some inputs failed (after answering for all
the others), 2 for a usage error (bad option, unreadable model, empty label list).
"""

from __future__ import annotations

import importlib.util
import sys
import time

import click


def _usage_error(msg: str):
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="xclip-engine")
def main():
    """X-CLIP video recognition: classify videos with your own labels."""
    # A process-wide setting, so the command line makes it for its own process and the library
    # never does: glibc malloc keeps freed memory for the next forward (engine/runtime/cpu_memory.py;
    # XCLIP_ENGINE_SYSTEM_MALLOC=1 opts out). Every command but `models` runs models on tensors.
    from .runtime import cpu_memory

    cpu_memory.keep_freed_memory()
    _show_label_warnings_as_lines()


def _show_label_warnings_as_lines():
    """Print the label set's warnings (duplicates merged, a label cut at 77 tokens) as one plain
    `warning: ...` line on stderr, not Python's `file:line: Category:` form with a source line."""
    import warnings

    from .io.labels import LabelWarning

    shown = warnings.showwarning
    if getattr(shown, "_xclip_labels", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LabelWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show._xclip_labels = True
    warnings.showwarning = show


def _labels_from_options(labels_text, labels_file):
    """--labels / --labels-file -> a label list (None: neither given); a bad value is a usage error."""
    from .io.labels import load_labels, parse_labels

    if labels_text is not None and labels_file is not None:
        _usage_error("give either --labels or --labels-file, not both")
    try:
        return (parse_labels(labels_text) if labels_text is not None
                else load_labels(labels_file) if labels_file is not None else None)
    except ValueError as e:
        _usage_error(str(e))


@main.command("models")
def models_cmd():
    """List the model names of the registry."""
    from .config import REGISTRY

    for name, e in REGISTRY.items():
        c = e.config
        click.echo(f"{name:36s} {e.family:5s} {c.num_frames:2d} frames {c.image_size} px  {e.hub_id or '-':45s} "
                   f"{e.note}")


@main.command("doctor")
@click.option("--model", "-m", "model_src", default=None,
              help="Model whose paths to measure: anything --model of infer takes, or an export folder. "
                   "Default: the bundled demonstration model.")
@click.option("--backbone", default=None, metavar="CLIP",
              help="EVL: the CLIP backbone of an official EVL .pth, as for infer.")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when a GPU is visible).")
@click.option("--fresh", is_flag=True, help="Measure again even when backend auto has a cached verdict.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts).")
def doctor_cmd(model_src, backbone, device, fresh, as_json):
    """Show this machine, every path that runs a model here (or why not), and which one auto takes."""
    from .checkpoint import CheckpointError
    from .doctor import diagnose, format_report, main_json

    try:
        report = diagnose(model_src, device=device, fresh=fresh, backbone=backbone)
    except (CheckpointError, KeyError, ValueError, NotImplementedError, OSError) as e:
        _usage_error(f"cannot examine the model {model_src or '(bundled default)'}: {e}")
    if as_json:
        main_json(report)
    else:
        click.echo(format_report(report))


@main.command("infer")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--model", "-m", "model_src", default=None,
              help="Registry name, transformers X-CLIP folder, official VideoX .pth, our checkpoint, or an "
                   "export folder (with --backend onnxruntime / openvino, or auto). Default: the bundled "
                   "demonstration model.")
@click.option("--arch", default=None, help="Registry name whose architecture an official .pth has.")
@click.option("--backbone", default=None, metavar="CLIP",
              help="EVL: the CLIP backbone of an official EVL .pth (OpenAI's ViT-B-16.pt / ViT-L-14.pt, a "
                   "transformers CLIP folder or an open_clip checkpoint). Other models hold their own.")
@click.option("--labels", "labels_text", default=None, help='Comma-separated labels: "cooking, dancing".')
@click.option("--labels-file", default=None,
              help="One label per line, an id,name CSV, or a bundled set: k400, k600, hmdb51, ucf101.")
@click.option("--glob", "globs", multiple=True, metavar="PATTERN",
              help="Which files of a folder input to read, e.g. '*.mp4' (quote it; repeat for several; "
                   "case-insensitive; a pattern with / matches the path below the folder). Default: the usual "
                   "video extensions. Files named on the command line are always read.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--views", default=None, metavar="NxM",
              help="Test views, N clips x M crops (M = 1 or 3), scores averaged: 1x1 (one clip, centre crop), "
                   "4x3 (X-CLIP's multi-view test), 3x1 (EVL's). Default: the model's own (X-CLIP 1x1, EVL 3x1).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="Decode threads; they decode the next batch while the model runs this one. At most 4 per "
                   "core and 32 are started (each holds a decoded video in memory), whatever is asked.")
@click.option("--decoder", default="auto", show_default=True, type=click.Choice(["auto", "dali", "pyav"]),
              help="Video decoder: dali (NVIDIA DALI, GPU), pyav (FFmpeg, CPU), auto (DALI where it can).")
@click.option("--format", "fmt", default="table", show_default=True,
              type=click.Choice(["table", "json", "jsonl", "csv", "parquet"]),
              help="json and jsonl are the same: one JSON object per line, "
                   '{"path": ..., "top": [{"label": ..., "score": ...}], "error": null}. parquet: with --ray, '
                   "a folder of Parquet part files.")
@click.option("--output", "-o", default=None, metavar="FILE",
              help="Write results to FILE instead of stdout, line by line as they come. With --shard I/N "
                   "(or torchrun) and N > 1, shard I writes FILE with .shard-I-of-N before its extension: "
                   "out.jsonl -> out.shard-0-of-4.jsonl. FILE must not be an input; an existing FILE needs "
                   "--resume or --overwrite; one run at a time (FILE.lock); JSON lines get FILE.meta.json, "
                   "which names the run (model, labels, topk, views, window) for --resume.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run: inputs already answered without error in --output (JSON lines) "
                   "are skipped, failed ones are tried again, the rest is appended. Refused when FILE.meta.json "
                   "names another model, label set, topk, views or window, or FILE has lines that are not results.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --output; the old file stays whole until the new one is complete.")
@click.option("--shard", default=None, metavar="I/N",
              help="Answer only shard I of N (0-based): the inputs whose position in the sorted input list "
                   "% N == I. Default under torchrun: RANK/WORLD_SIZE.")
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Classify windows of SECONDS along each video instead of the whole video: one JSON line "
                   "(a timeline) per video.")
@click.option("--stride", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Step between windows (with --window; default: the window length).")
@click.option("--plot", default=None, metavar="FILE.png",
              help="With --window: draw the timeline to FILE.png (several videos: FILE.<video name>.png).")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "reference", "onednn", "triton", "onnxruntime", "tensorrt", "openvino"]),
              help="auto: the fastest path that gives the reference's answers on this machine, measured once "
                   "(triton on a GPU; bf16 or onednn on a CPU; ONNX Runtime or OpenVINO, fp32/bf16/int8, for an "
                   "export folder); stderr says which it took. onednn: the reference with its fp32 GEMMs on "
                   "oneDNN. onnxruntime, tensorrt and openvino run an export folder.")
@click.option("--precision", default=None, type=click.Choice(["fp32", "bf16", "fp16", "int8"]),
              help="fp32 or bf16 for a checkpoint (backend reference); fp32, fp16 or int8 picks the graphs of an "
                   "export folder (backends onnxruntime / tensorrt); fp32, bf16 or int8 on backend openvino "
                   "(bf16: the fp32 graphs run in bf16).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if present, else cpu).")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="CPU threads for the model, torch and ONNX Runtime alike (default: one per core). Lower it "
                   "when other work shares the machine: more threads than free cores slow every one down.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run on Ray Data: local (a private Ray on this machine), auto (the running cluster, "
                   "RAY_ADDRESS) or a cluster address. --workers decode tasks on CPUs, a pool of model actors "
                   "(--ray-actors); same rows, --output, --resume and exit status. Inputs may be manifests "
                   "(.txt/.lst, or a .csv/.parquet 'path' column); --output may be a FOLDER/ of part files.")
@click.option("--ray-actors", default=None, metavar="MIN:MAX",
              help="With --ray: model actors, each loading the model once (a GPU each where the cluster has "
                   "GPUs). Default: 1 to the cluster's GPU count (1 without GPUs).")
@click.pass_context
def infer_cmd(ctx, inputs, model_src, arch, backbone, labels_text, labels_file, globs, topk, views, batch_size, workers,
              decoder, fmt, output, resume, overwrite, shard, window, stride, plot, backend, precision, device,
              threads, ray_address, ray_actors):
    """Classify VIDEOS (files or folders of videos) against a label set.

    Folders are searched recursively; inputs are answered in sorted path order, each once.
    Exit status: 0 all answered, 1 some failed (the others are still answered), 2 usage error.
    """
    from .api import load
    from .checkpoint import CheckpointError
    from .io.results import ResultsFileError, ShardError, parse_shard, shard_from_env
    from .pipeline import infer
    from .video.decoders import DALI_INSTALL, DecoderUnavailableError, dali_installed

    fmt = "jsonl" if fmt == "json" else fmt   # one format, two names (json was always JSON lines)
    if ray_address is not None:
        from .cluster import RAY_INSTALL, missing_modules, parse_actors

        if missing_modules():
            _usage_error(f"--ray runs on Ray Data, which is not installed: `{RAY_INSTALL}`")
        if arch is not None or device is not None:
            _usage_error("--ray: each actor loads --model itself on the device Ray gives it: drop --arch/--device")
        try:
            parse_actors(ray_actors)
        except ValueError as e:
            _usage_error(str(e).replace("ray_actors", "--ray-actors"))
    elif ray_actors is not None:
        _usage_error("--ray-actors sizes the model actors of a --ray run: pass --ray ADDRESS too")
    if fmt == "parquet" and ray_address is None:
        _usage_error("--format parquet writes a folder of part files: with --ray and --output FOLDER/")
    if window is None and (stride is not None or plot is not None):
        _usage_error("--stride and --plot go with --window SECONDS")
    if window is not None:
        if fmt != "jsonl" and ctx.get_parameter_source("fmt") != click.core.ParameterSource.DEFAULT:
            _usage_error("--window writes one JSON line (a timeline) per video: use --format jsonl")
        if views not in (None, "1x1"):
            _usage_error("--window classifies each window with one view: drop --views")
        fmt = "jsonl"
    if decoder == "dali" and not dali_installed():
        _usage_error(f"--decoder dali needs NVIDIA DALI, which is not installed: `{DALI_INSTALL}` "
                     "(or use --decoder pyav / auto)")
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        _usage_error("--plot needs matplotlib: `pip install matplotlib`")
    from .cluster.folder_output import is_folder_output

    folder_out = ray_address is not None and is_folder_output(output, fmt)
    if resume and not folder_out and (output is None or fmt != "jsonl"):
        _usage_error("--resume continues a JSON lines file: pass --output FILE --format jsonl")
    if overwrite and output is None:
        _usage_error("--overwrite replaces an --output FILE: pass one")
    if overwrite and resume:
        _usage_error("--resume continues --output and --overwrite replaces it: pass one of them")
    try:
        # the command line's default under torchrun: this rank's shard (xe.infer's default is all inputs)
        shard = parse_shard(shard) if shard is not None else shard_from_env()
    except ShardError as e:
        _usage_error(str(e))
    labels = _labels_from_options(labels_text, labels_file)

    if output is not None and not folder_out:
        # what the path alone can tell, before a model loads for seconds (xe.infer checks it all again)
        from .io.output import check_output_path
        from .io.results import shard_output_path

        try:
            check_output_path(shard_output_path(output, *(shard or (0, 1))), resume=resume, overwrite=overwrite)
        except ResultsFileError as e:
            _usage_error(str(e))
    if threads is not None:
        import torch

        torch.set_num_threads(threads)   # ONNX Runtime sessions take the same number (export/ort_runner.py)
    if ray_address is None:
        try:
            model = load(model_src, backend=backend, device=device, arch=arch, precision=precision,
                         backbone=backbone)
        except (CheckpointError, KeyError, ValueError, NotImplementedError, OSError) as e:
            _usage_error(f"cannot load the model {model_src or '(bundled default)'}: {e}")
    if model_src is None:
        click.echo("using the bundled demonstration model (shapes data set); pass --model for a real X-CLIP",
                   err=True)
    if ray_address is None:
        click.echo(f"backend: {model.backend_note}", err=True)
        if model.closed_set and labels_text is not None:
            _usage_error(f"--labels: this {model.family.upper()} model is a closed-set classifier of "
                         f"{model.num_classes} classes; it cannot score free-text labels. Its classes are named by "
                         "the model itself (leave --labels out), or rename them with --labels-file FILE of "
                         f"{model.num_classes} names (k400 for a Kinetics-400 model)")
        if model.closed_set and labels is None and not model.labels:
            _usage_error(f"this model's {model.num_classes} classes have no names: pass --labels-file FILE with "
                         f"{model.num_classes} names, one per class in the order of its outputs")
        if labels is None and not model.labels:
            _usage_error("no labels: pass --labels \"a, b, c\" or --labels-file FILE (or k400, k600, hmdb51, "
                         "ucf101)")
        ray_args = {}
    else:   # each Ray actor loads the model from its source (the driver reads only its labels and shapes)
        model = model_src
        ray_args = dict(ray=ray_address, ray_actors=ray_actors, backend=backend, precision=precision,
                        backbone=backbone)
        click.echo(f"ray: {ray_address}; each model actor loads the model with backend {backend}", err=True)

    try:
        run = infer(inputs, model, labels, topk=topk, views=views, window=window, stride=stride,
                    output=output or sys.stdout, fmt=fmt, resume=resume, overwrite=overwrite, shard=shard,
                    batch_size=batch_size,
                    workers=workers, decoder=decoder, glob=globs, plot=plot, **ray_args)
    except (ResultsFileError, ValueError) as e:   # what the checks above let through (the output file's rules)
        _usage_error(str(e))
    except (CheckpointError, KeyError, NotImplementedError, OSError) as e:   # --ray: the driver's model load
        _usage_error(f"cannot load the model {model_src or '(bundled default)'}: {e}")

    from tqdm import tqdm

    failed, start = 0, time.perf_counter()
    try:
        with tqdm(total=len(run.todo), unit="video", file=sys.stderr, disable=len(run.todo) <= 3,
                  desc="infer") as bar:
            for row in run:
                failed += row["error"] is not None
                bar.update(1)
    except DecoderUnavailableError as e:   # the decoder cannot run here at all: a usage error
        _usage_error(str(e))
    finally:
        run.close()   # stops the decode threads and closes the output file, also on Ctrl-C
    elapsed = time.perf_counter() - start
    todo, (index, count) = len(run.todo), run.shard
    where = f" in {run.output}" if run.output else " above"
    shard_note = f" (shard {index} of {count}: {len(run.paths)} of {len(run.found)} inputs)" if count > 1 else ""
    skipped = f", skipped {len(run.skipped)} already answered{where}" if resume else ""
    click.echo(f"infer{shard_note}: videos {todo}, answered {todo - failed}, failed {failed}{skipped}, "
               f"elapsed {elapsed:.1f} s, {todo / elapsed if elapsed > 0 else 0.0:.2f} videos/s", err=True)
    if failed:
        click.echo(f"{failed} of {todo} inputs failed; see their errors{where}", err=True)
    sys.exit(1 if failed else 0)


@main.command("serve")
@click.option("--model", "-m", "model_src", default=None,
              help="Anything --model of infer takes. Default: the bundled demonstration model.")
@click.option("--backbone", default=None, metavar="CLIP",
              help="EVL: the CLIP backbone of an official EVL .pth, as for infer. Other models hold their own.")
@click.option("--labels", "labels_text", default=None, help='Default label set: "cooking, dancing" (a request\'s '
              "labels field overrides it). Default: the model's own labels. Not for EVL (closed-set: its own classes).")
@click.option("--labels-file", default=None, help="Default label set from a file or a bundled set (k400, ...); "
              "EVL: its class names, one per class.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: all).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(min=1),
              help="Model replicas (each a Ray actor with its own copy of the model).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Most videos scored in one model call, across clients.")
@click.option("--batch-wait-ms", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="How long a request waits for others to fill its batch.")
@click.option("--max-upload-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Larger uploads are refused (413).")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=1),
              help="Requests one replica takes at once (decoding, batching, scoring); more get 503 + Retry-After.")
@click.option("--decode-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Seconds a request's video may take to decode (408 after).")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting a private Ray.")
@click.option("--num-cpus", default=None, type=click.IntRange(min=1),
              help="CPUs the private Ray may schedule (default: this machine's).")
@click.option("--ingress", default="auto", show_default=True, type=click.Choice(["auto", "direct", "proxy"]),
              help="Where requests enter: direct (the replica listens on --port itself; a private Ray with one "
                   "replica), proxy (Ray Serve's HTTP proxy forwards to the replicas); auto: direct when it can.")
def serve_cmd(model_src, backbone, labels_text, labels_file, host, port, replicas, max_batch, batch_wait_ms,
              max_upload_mb, max_queue, decode_timeout, ray_address, num_cpus, ingress):
    """Serve the model over HTTP (Ray Serve, FastAPI): POST /v1/classify, /v1/embed; GET /healthz,
    /v1/models, /docs. Blocks until Ctrl-C / SIGTERM, then drains in-flight requests.
    XCLIP_ENGINE_API_KEY set: every request but /healthz needs `Authorization: Bearer <key>`."""
    from .serve import SERVE_INSTALL, missing_modules

    missing = missing_modules()
    if missing:
        _usage_error(f"`serve` needs {', '.join(missing)}, which is not installed: `{SERVE_INSTALL}`")
    if backbone is not None and model_src is None:
        _usage_error("--backbone goes with an official EVL .pth (--model FILE.pth); the bundled model holds its own")
    labels = _labels_from_options(labels_text, labels_file)
    labels_from = "--labels" if labels_text is not None else "--labels-file" if labels_file is not None else None
    from .serve.server import run_server

    sys.exit(run_server(model_src, labels, host=host, port=port, replicas=replicas, max_batch=max_batch,
                        batch_wait_ms=batch_wait_ms, max_upload_mb=max_upload_mb, ray_address=ray_address,
                        max_queue=max_queue, decode_timeout_s=decode_timeout, num_cpus=num_cpus, backbone=backbone,
                        labels_from=labels_from, ingress=ingress))


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
