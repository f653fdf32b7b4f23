"""The commands. Each body: parse, one library call, format."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .main import cli, emit, load_model_from_options, model_options, output_options


@cli.command()
@click.argument("model_spec")
@model_options
@output_options(("table", "json", "csv", "jsonl"))
@click.option("--all", "show_all", is_flag=True, help="Also list every intermediate node, not only aliased layers and modules.")
def layers(model_spec, fmt, output, show_all, **model_kw):
    """List the selectable layers of MODEL_SPEC with shapes and receptive fields.

    MODEL_SPEC: torchvision:NAME, cifar-resnet20|32|44|56, torchscript:PATH or python:pkg.mod:fn.
    """
    from neuronindex.layers import trace

    graph = trace(load_model_from_options(model_spec, **model_kw))
    rows = [l.row() for l in graph.layers if show_all or fmt != "table" or l.alias or l.modules]
    emit(rows, fmt, output)


@cli.command()
@click.argument("source")
@click.option("--download", is_flag=True, help="Download a torchvision dataset (needs internet).")
@click.option("--no-check", is_flag=True, help="List only; do not decode every image.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def images(source, download, no_check, fmt):
    """Count the images of SOURCE per class and report unreadable files.

    SOURCE: an image folder (class sub-folders), a flat folder, a manifest CSV, or torchvision:NAME[:split].
    """
    from neuronindex.data import open_source, survey

    report = survey(open_source(source, download=download), check=not no_check, progress=fmt == "table")
    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{report['images']} images in {len(report['classes'])} classes ({report['kind']}: {report['source']})")
    for name, count in report["classes"].items():
        click.echo(f"  {name:<30} {count}")
    if report["hierarchy"]:
        click.echo("hierarchy (class -> parent):")
        for child, parent in report["hierarchy"].items():
            click.echo(f"  {child} -> {parent}")
    click.echo(f"{len(report['problems'])} problems")
    for p in report["problems"]:
        click.echo(f"  {p['path']}: {p['reason']}")


@cli.command()
@click.argument("index_dir", type=click.Path(path_type=Path))
def migrate(index_dir):
    """Upgrade the index in INDEX_DIR to this version's schema, in place and atomically."""
    from neuronindex.store import code_version, migrate as run

    applied = run(index_dir)
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    click.echo(f"index at schema version {code_version()}")
