"""`xclip-engine make-dataset NAME OUT`: a thin click layer over ``synthetic.make_dataset``."""

from __future__ import annotations

import time

import click


@click.command("make-dataset")
@click.argument("name")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Everything (clips, held-out classes, lists) follows from it.")
@click.option("--clips-per-class", default=60, show_default=True, type=click.IntRange(min=1),
              help="Training clips per training class.")
@click.option("--eval-clips-per-class", default=10, show_default=True, type=click.IntRange(min=1),
              help="Validation clips and test clips (each) per training class.")
@click.option("--zeroshot-classes", default=12, show_default=True, type=click.IntRange(min=0),
              help="Compositions held out of training for zero-shot (0: none).")
@click.option("--zeroshot-clips-per-class", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--frames", default=24, show_default=True, type=click.IntRange(min=1), help="Frames per clip.")
@click.option("--size", default=64, show_default=True, type=click.IntRange(min=1), help="Width = height, pixels.")
@click.option("--fps", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--colours", default=None, help="Subset, e.g. red,blue (default: red,green,blue,yellow).")
@click.option("--shapes", default=None, help="Subset, e.g. circle,square (default: circle,square,triangle).")
@click.option("--motions", default=None,
              help="Subset of left,right,up,down,grow,shrink,rotate,blink (default: all).")
@click.option("--distractors", default=0, show_default=True, type=click.IntRange(0, 4),
              help="Static white or black shapes per clip.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1), help="Encoding processes.")
@click.option("--overwrite", is_flag=True, help="Replace a data set that make-dataset wrote in OUT before.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def make_dataset_cmd(name, out, quiet, **options):
    """Write the synthetic data set NAME (known: shapes) into the folder OUT."""
    # imported here: the renderer brings OpenCV and PyAV, which `xclip-engine --help` need not load
    from .synthetic import DATASETS, DatasetError, make_dataset

    if name not in DATASETS:
        raise click.BadParameter(f"unknown data set {name!r}; known: {', '.join(DATASETS)}", param_hint="NAME")
    start = time.perf_counter()
    try:
        m = make_dataset(name, out, progress=not quiet, **options)
    except DatasetError as e:
        raise click.UsageError(str(e)) from None
    clips = ", ".join(f"{n} {s}" for s, n in m["clips"].items())
    click.echo(f"wrote {out}: {m['num_classes']} classes ({m['num_train_classes']} training, "
               f"{m['num_zeroshot_classes']} zero-shot), {clips} clips in {time.perf_counter() - start:.1f} s")
