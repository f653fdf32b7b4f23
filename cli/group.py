"""The click group and what its commands share: option groups, output, model loading.

Errors from the library (neuronindex.errors) are turned into `Error: <message>` and the error's
exit code here, once; no traceback is shown for a user mistake.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from neuronindex import __version__
from neuronindex.errors import DiskFullError, NeuronIndexError, disk_full
from neuronindex.formats import render
from neuronindex.nets.models import Preprocessing, load_model
from neuronindex.settings import BY_NAME


class Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except NeuronIndexError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:  # a full disk at any write: one line, not a traceback
            if not disk_full(exc):
                raise
            click.echo(f"Error: no space left on the disk: {str(exc).splitlines()[0]}; free space and run again "
                       "(an ingest continues with --resume)", err=True)
            sys.exit(DiskFullError.exit_code)
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="neuronindex")
def cli():
    """Index what every neuron of a trained CNN responds to, then query it."""


def output_options(formats=("table", "csv", "json", "jsonl")):
    def decorator(f):
        @click.option("--format", "fmt", type=click.Choice(list(formats)), default=formats[0], show_default=True,
                      help="Output format.")
        @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
                      help="Write to this file instead of standard output.")
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)
        return wrapper
    return decorator


def emit(rows, fmt: str, output: Path | None = None, columns=None) -> None:

    data = render(rows, fmt, columns)
    if output is not None:
        output.write_bytes(data if isinstance(data, bytes) else data.encode())
        click.echo(f"wrote {len(rows)} rows to {output}", err=True)
    elif isinstance(data, bytes):
        raise click.UsageError("binary formats need -o FILE")
    else:
        click.echo(data, nl=False)


def setting_option(flag: str, name: str | None = None, dest: str | None = None, **kw):
    """A click option whose default and help come from the settings table (`dest`: the parameter's
    name, when the flag's own would be another setting's)."""

    s = BY_NAME[name or flag.lstrip("-").replace("-", "_")]
    decls = (flag, dest) if dest else (flag,)
    return click.option(*decls, default=s.default, show_default=True, help=s.help, type=type(s.default), **kw)


def model_options(f):
    @click.option("--weights", default=None, help="Weights name (torchvision) or checkpoint file.")
    @click.option("--input-size", nargs=2, type=int, default=None, metavar="H W", help="Model input size.")
    @click.option("--resize-policy", type=click.Choice(["resize-crop", "resize", "none"]), default=None,
                  help="How images become the input size.")
    @click.option("--resize", type=int, default=None, help="Shorter side before the centre crop (resize-crop).")
    @click.option("--mean", nargs=3, type=float, default=None, metavar="R G B", help="Normalisation mean (in pixel scale).")
    @click.option("--std", nargs=3, type=float, default=None, metavar="R G B", help="Normalisation std (in pixel scale).")
    @click.option("--channel-order", type=click.Choice(["rgb", "bgr"]), default=None, help="bgr for Caffe-converted models.")
    @click.option("--pixel-scale", type=click.Choice(["1", "255"]), default=None, help="255 for Caffe-converted models.")
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)
    return wrapper


def load_model_from_options(spec, weights=None, input_size=None, resize_policy=None, resize=None, mean=None,
                            std=None, channel_order=None, pixel_scale=None, name=None):
    from dataclasses import asdict

    loaded = load_model(spec, weights, name=name)
    changes = {k: v for k, v in {
        "input_size": tuple(input_size) if input_size else None, "geometry": resize_policy, "resize": resize,
        "mean": tuple(mean) if mean else None, "std": tuple(std) if std else None,
        "channel_order": channel_order, "pixel_scale": float(pixel_scale) if pixel_scale else None,
    }.items() if v is not None}
    if changes:
        loaded.preprocessing = Preprocessing(**{**asdict(loaded.preprocessing), **changes})
    return loaded
