"""`xclip-engine export`: a thin command over export_model (registered on the group in engine/cli.py).

Exit status: 0 when the folder is written and its graphs agree with the reference; 1 when a check
failed (the table says which file); 2 for a usage error: no or unreadable model, a bad --out, or
--tensorrt on a machine that cannot build engines (after the ONNX folder is written).
"""

from __future__ import annotations

import sys

import click


def _usage_error(msg: str):
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@click.command("export")
@click.option("--model", "-m", "model_src", default=None,
              help="Model to export: registry name, transformers X-CLIP folder, official VideoX .pth, an EVL "
                   "checkpoint (with --backbone for an official one), or a checkpoint of ours. Default: the bundled "
                   "demonstration model.")
@click.option("--out", "-o", default="xclip-export", show_default=True,
              help="Folder to write (new, empty, or an earlier export, which is replaced).")
@click.option("--arch", default=None, help="Registry name whose architecture an official .pth has.")
@click.option("--backbone", default=None, help="EVL: the CLIP backbone file an official EVL checkpoint loads with.")
@click.option("--random-init", is_flag=True, help="A registry name with random weights (tests, timing).")
@click.option("--fp16", is_flag=True, help="Also write mixed-precision fp16 graphs (for GPUs and TensorRT).")
@click.option("--int8", is_flag=True, help="Also write a static int8 video graph (for CPUs: ONNX Runtime, OpenVINO), "
              "calibrated on --calibrate DIR or on built-in clips.")
@click.option("--calibrate", "calibrate", default=None, type=click.Path(file_okay=False),
              help="With --int8: a folder of your own clips to calibrate the int8 scales on (like the videos the "
                   "model will see). Default: built-in synthetic clips.")
@click.option("--calibrate-clips", default=8, show_default=True, type=click.IntRange(min=1),
              help="With --int8: how many calibration clips to use.")
@click.option("--tensorrt", is_flag=True, help="Also build TensorRT engines from the fp16 graphs (needs a GPU).")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(min=1),
              help="Largest video batch of the TensorRT profile (larger calls are split).")
@click.option("--max-labels", default=400, show_default=True, type=click.IntRange(min=1),
              help="Most labels of the TensorRT profile (larger label sets are split).")
@click.option("--no-check", is_flag=True, help="Skip running the graphs against the reference model.")
def export_cmd(model_src, out, arch, backbone, random_init, fp16, int8, calibrate, calibrate_clips, tensorrt,
               max_batch, max_labels, no_check):
    """Export a model to ONNX (+ fp16, int8, TensorRT) for `--backend onnxruntime` / `tensorrt`."""
    from xclip_engine.engine.api import default_model_path
    from xclip_engine.engine.checkpoint import CheckpointError

    from .calibration import CalibrationError
    from .onnx_export import ExportCheckFailed, ExportError, export_model
    from .trt_runner import TensorRTUnavailable

    try:
        source = model_src or default_model_path()
    except FileNotFoundError as e:
        _usage_error(str(e))
    if calibrate is not None and not int8:
        _usage_error(f"--calibrate {calibrate}: calibration clips are for the int8 graph; add --int8")
    try:
        result = export_model(source, out, arch=arch, backbone=backbone, random_init=random_init, fp16=fp16,
                              int8=int8, calibrate=calibrate, calibrate_clips=calibrate_clips, tensorrt=tensorrt,
                              max_batch=max_batch, max_labels=max_labels,
                              check=not no_check, echo=lambda m: click.echo(m, err=True))
    except TensorRTUnavailable as e:
        click.echo(f"the ONNX folder {out} is written and serves --backend onnxruntime; TensorRT engines were not "
                   f"built: {e}", err=True)
        sys.exit(2)
    except ExportCheckFailed as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except (ExportError, CalibrationError) as e:
        _usage_error(str(e))
    except (CheckpointError, KeyError, ValueError, OSError) as e:
        _usage_error(f"cannot export {source}: {e}")
    click.echo(f"wrote {result.folder}: serve it with `xclip-engine infer VIDEOS --model {result.folder} "
               "--backend onnxruntime`")


if __name__ == "__main__":
    export_cmd()
