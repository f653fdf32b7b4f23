"""The commands. Each body: parse, one library call, format."""
from __future__ import annotations

import json
from pathlib import Path

import click

import neuronindex
from neuronindex import report as reporting
from neuronindex import settings as settings_table
from neuronindex import store
from neuronindex.checks import UNIT_KIND_NAMES, parse_box
from neuronindex.conceptsets import open_concepts
from neuronindex.data import open_source, survey
from neuronindex.demo import run_demo
from neuronindex.errors import UsageError
from neuronindex.formats import plain, to_table
from neuronindex.jobs import categories as categories_job
from neuronindex.jobs import directions as directions_job
from neuronindex.jobs import dissect as dissect_job
from neuronindex.jobs import ingest as ingest_job
from neuronindex.jobs import maps as maps_job
from neuronindex.jobs import visualize as visualize_job
from neuronindex.jobs.distributed import ingest_on_ray
from neuronindex.jobs.ingest import IngestParams, build_vectors, merge_states
from neuronindex.jobs.recompute import recompute
from neuronindex.nets.layers import trace
from neuronindex.science.dictionaries import DictionarySpec
from neuronindex.science.optvis.render import VizParams
from neuronindex.service import serve as run_service
from neuronindex.settings import BY_NAME

from .group import (
    cli,
    emit,
    load_model_from_options,
    model_options,
    output_options,
    setting_option,
)


@cli.command()
@click.argument("model_spec")
@model_options
@output_options(("table", "json", "csv", "jsonl"))
@click.option("--all", "show_all", is_flag=True, help="Also list every intermediate node, not only aliased layers and modules.")
def layers(model_spec, fmt, output, show_all, **model_kw):
    """List the selectable layers of MODEL_SPEC with shapes and receptive fields.

    MODEL_SPEC: torchvision:NAME, cifar-resnet20|32|44|56, torchscript:PATH or python:pkg.mod:fn.
    """

    graph = trace(load_model_from_options(model_spec, **model_kw))
    rows = [l.row() for l in graph.layers if show_all or fmt != "table" or l.alias or l.modules]
    emit(rows, fmt, output)


def label_options(f):
    """--labels and --class-list: how a flat folder's images get their classes."""
    f = click.option("--class-list", type=click.Path(dir_okay=False), default=None,
                     help="Class names in number order (one per line) for numbered ground-truth labels.")(f)
    return click.option("--labels", default="auto", show_default=True,
                        help="auto | folders | imagenet (nXXXXXXXX_* file names) | regex:PATTERN | none | a "
                             "ground-truth FILE (ImageNet validation style).")(f)


@cli.command()
@click.argument("source")
@click.option("--download", is_flag=True, help="Download a torchvision dataset (needs internet).")
@click.option("--no-check", is_flag=True, help="List only; do not decode every image.")
@label_options
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def images(source, download, no_check, labels, class_list, fmt):
    """Count the images of SOURCE per class and report unreadable files.

    SOURCE: an image folder (class sub-folders), a flat folder, a manifest CSV, or torchvision:NAME[:split].
    """

    report = survey(open_source(source, download=download, labels=labels, class_list=class_list), check=not no_check,
                    progress=fmt == "table")
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
    restored: list[str] = []
    applied = store.migrate(index_dir, restored)
    if restored:
        click.echo(f"replaced SQL neuronindex did not write: {', '.join(restored)}")
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    click.echo(f"index at schema version {store.code_version()}")


def _shard(value):
    if value is None:
        return None
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise click.BadParameter("use I/N, e.g. 0/4") from None
    return (i, n)


@cli.command()
@click.option("--model", "model_spec", required=True, help="Model spec (see `neuronindex layers --help`).")
@model_options
@click.option("--name", default=None, help="Model name in the index (first part of neuron keys).")
@click.option("--images", "source", required=True, help="Image folder, manifest CSV or torchvision:NAME[:split].")
@click.option("--download", is_flag=True, help="Download a torchvision dataset (needs internet).")
@label_options
@click.option("--layers", "--layer", "layer_spec", required=True, help="Comma-separated layer names or aliases, or all-conv.")
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Index directory.")
@setting_option("--top-k")
@setting_option("--batch-size")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--amp", is_flag=True, help="Mixed precision (CUDA only).")
@click.option("--spatial-means", is_flag=True, help="Also the CSI of Morcos et al. (csi_mean): class means of "
                                                     "each map's spatial mean; one more read of every map.")
@click.option("--workers", default=0, show_default=True, help="DataLoader worker processes decoding images.")
@click.option("--limit", type=int, default=None, help="Use only the first N images.")
@setting_option("--probe-size")
@setting_option("--nf-max")
@setting_option("--nf-threshold")
@setting_option("--nf-memory")
@setting_option("--class-threshold")
@click.option("--resume", is_flag=True, help="Continue an interrupted ingest from its last checkpoint.")
@click.option("--checkpoint-every", default=120.0, show_default=True, help="Seconds between pass-1 checkpoints.")
@click.option("--shard", default=None, help="I/N: ingest every N-th image from I (with --state-out).")
@click.option("--state-out", type=click.Path(dir_okay=False), default=None,
              help="Save the mergeable pass-1 state here instead of publishing (see `merge`).")
@click.option("--no-wait", is_flag=True, help="Fail at once when another process is writing the index.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@setting_option("--bottom-k")
@setting_option("--directions")
@click.option("--direction-pooling", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help=BY_NAME["direction_pooling"].help)
@setting_option("--svd-rank")
@setting_option("--svd-max")
@setting_option("--random-directions")
@setting_option("--random-quantile")
@setting_option("--atoms")
@setting_option("--dict-samples")
@setting_option("--dict-positions")
@setting_option("--sae-steps")
@setting_option("--sae-l1")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run pass 1 and pass 2 as Ray tasks: alone, a local Ray instance; auto, the cluster running here; or a "
                   "cluster's address (needs the ray extra).")
@click.option("--ray-shards", type=int, default=None, help="With --ray: image shards (default: 4 per worker slot).")
@click.option("--ray-cpus-per-worker", type=float, default=1.0, show_default=True, help="With --ray: CPUs per task.")
@click.option("--ray-gpus-per-worker", type=float, default=0.0, show_default=True, help="With --ray: GPUs per task.")
@click.option("--visualize", "visualize_steps", type=int, default=None, metavar="STEPS",
              help="Then optimise an image for every neuron (activation maximisation, `neuronindex visualize` "
                   "with its defaults and this many steps, e.g. 256).")
@click.option("--dissect", "dissect_concepts", default=None, metavar="CONCEPTS",
              help="Then run Network Dissection with this concept set (colour, or a Broden or plain folder), as "
                   "`neuronindex dissect --concepts CONCEPTS` does.")
def ingest(model_spec, name, source, download, labels, class_list, layer_spec, index_dir, top_k, batch_size, device, amp,
           spatial_means, workers, limit,
           probe_size, nf_max, nf_threshold, nf_memory, class_threshold, resume, checkpoint_every, shard, state_out,
           no_wait, quiet, bottom_k, directions, direction_pooling, svd_rank, svd_max, random_directions, random_quantile,
           atoms, dict_samples, dict_positions, sae_steps, sae_l1, ray_address, ray_shards, ray_cpus_per_worker, ray_gpus_per_worker, visualize_steps, dissect_concepts,
           **model_kw):
    """Index the neurons of LAYERS of a model over an image collection."""
    params = IngestParams(top_k=top_k, batch_size=batch_size, probe_size=probe_size, limit=limit, shard=_shard(shard),
                          nf_max=nf_max, nf_threshold=nf_threshold, nf_memory=nf_memory,
                          class_threshold=class_threshold, device=device, workers=workers, amp=amp, spatial_means=spatial_means, bottom_k=bottom_k,
                          directions=directions, direction_pooling=direction_pooling, svd_rank=svd_rank, svd_max=svd_max,
                          random_directions=random_directions, random_quantile=random_quantile, atoms=atoms,
                          dict_samples=dict_samples, dict_positions=dict_positions, sae_steps=sae_steps, sae_l1=sae_l1)
    params.validate()  # before the model loads: a bad option fails at once
    loaded = load_model_from_options(model_spec, name=name, **model_kw)
    if loaded.random_weights:
        click.echo(f"warning: no --weights: {model_spec} is randomly initialised (seed 0), so the index describes an "
                   "untrained network; pass --weights NAME|FILE for a trained one", err=True)
    if params.shard is not None and not state_out:
        raise click.UsageError("--shard needs --state-out FILE; merge the shards with `neuronindex merge`")
    if dissect_concepts and state_out:
        raise click.UsageError("--dissect needs the published index; run it after `neuronindex merge`")
    if dissect_concepts and dissect_concepts != "colour":
        open_concepts(dissect_concepts)  # a bad concept folder fails before the ingest, not after it
    viz_params = None
    if visualize_steps is not None:

        viz_params = VizParams(steps=visualize_steps)
        viz_params.validate()
    if ray_address is not None:
        if state_out or params.shard is not None:
            raise click.UsageError("--ray makes and merges its own shards; leave out --shard and --state-out")
        if params.device.startswith("cuda") and ray_gpus_per_worker <= 0:
            ray_gpus_per_worker = 1.0

        summary = ingest_on_ray(loaded, source, layer_spec, index_dir, params=params, resume=resume,
                                progress=not quiet, download=download, labels=labels, class_list=class_list,
                                wait=not no_wait, visualize=viz_params, address=None if ray_address == "local" else ray_address,
                                shards=ray_shards, cpus_per_worker=ray_cpus_per_worker,
                                gpus_per_worker=ray_gpus_per_worker)
    else:
        summary = ingest_job.ingest(loaded, source, layer_spec, index_dir, params=params, resume=resume, progress=not quiet,
                      checkpoint_seconds=checkpoint_every, state_out=state_out, download=download, labels=labels,
                      class_list=class_list, wait=not no_wait, visualize=viz_params)
    _print_summary(summary, index_dir)
    if dissect_concepts and "state" not in summary:
        model = summary.get("model")
        for r in dissect_job.dissect(index_dir, dissect_concepts, model=model, progress=not quiet, wait=not no_wait):
            click.echo(f"{r['model']} {r['layer']}: {r['interpretable']} of {r['units']} units interpretable "
                       f"({r['labels'] or 'none'})")


def _print_summary(summary, index_dir):
    if summary.get("already_published"):
        click.echo(f"this run was already published into {index_dir} as model {summary['model']}; nothing to do")
        return
    if "state" in summary:
        click.echo(f"saved pass-1 state of {summary['images']} images to {summary['state']}")
        return
    directions = f" and {summary['directions']} directions" if summary.get("directions") else ""
    click.echo(f"indexed {summary['neurons']} neurons{directions} of {len(summary['layers'])} layers of {summary['model']} "
               f"over {summary['images']} images into {index_dir}"
               + (f" ({summary['problems']} unreadable images skipped)" if summary["problems"] else ""))
    if summary.get("visualized") is not None:
        click.echo(f"optimised images of {summary['visualized']} neurons (neuronindex visualize)")
    t = summary.get("timings", {})
    click.echo("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))


@cli.command()
@click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.argument("states", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-q", "--quiet", is_flag=True)
def merge(index_dir, states, quiet):
    """Merge pass-1 STATES of disjoint shards (from `ingest --shard I/N --state-out F`) and publish."""
    _print_summary(merge_states(list(states), index_dir, progress=not quiet), index_dir)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="Only this model (default: every ingest in the index).")
@click.option("--nf-max", type=int, default=None, help="Most crops averaged into a Neuron Feature.")
@click.option("--nf-threshold", type=float, default=None, help="Least relative activation of an NF crop.")
@click.option("--workers", type=int, default=None, help="DataLoader worker processes decoding images.")
@click.option("-q", "--quiet", is_flag=True)
def features(index_dir, model, nf_max, nf_threshold, workers, quiet):
    """Recompute Neuron Features (pass 2) and what derives from them, e.g. with another threshold."""
    for done in recompute(index_dir, model, progress=not quiet, nf_max=nf_max, nf_threshold=nf_threshold,
                          workers=workers):
        click.echo(f"recomputed {done['neurons']} neurons of {done['model']}")


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("neuron_key")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="PNG file to write (default: KEY.png with / replaced by _, and the view and rank).")
@click.option("--view", type=click.Choice(["nf", "context", "deconvnet", "guided", "backprop"]), default="nf",
              show_default=True, help="nf: the Neuron Feature above the top crops; context: the whole image with the "
              "neuron's heatmap and field; deconvnet / guided / backprop: its activation projected back to pixels "
              "(Yu et al. 2014), cropped to the field.")
@click.option("--rank", type=click.IntRange(min=1), default=1, show_default=True, help="Which top (or bottom) image.")
@click.option("--side", type=click.Choice(["top", "bottom"]), default="top", show_default=True)
@click.option("--whole", is_flag=True, help="Reconstructions over the whole image, not cropped to the field.")
def show(index_dir, neuron_key, output, view, rank, side, whole):
    """Write a picture of a neuron: its Neuron Feature above its top crops, or one image in context
    or reconstructed (--view)."""

    with neuronindex.open(index_dir) as idx:
        n = idx.neuron(neuron_key)
        if view == "nf":
            picture = n.picture()
        elif view == "context":
            picture = n.context(rank, side)
        else:
            picture = n.reconstruction(rank, side, view, whole)
    suffix = "" if view == "nf" else f"_{view}_{side}{rank}"
    output = output or Path(neuron_key.replace("/", "_") + suffix + ".png")
    picture.save(output)
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("neuron_key")
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json", show_default=True)
@click.option("--topk", "with_topk", is_flag=True, help="Include the top images.")
@click.option("--bottomk", "with_bottomk", is_flag=True, help="Include the bottom images (lowest activations).")
@click.option("--distribution", "with_distribution", is_flag=True,
              help="Include the activation histogram, density and per-class mean activations.")
def neuron(index_dir, neuron_key, fmt, with_topk, with_bottomk, with_distribution):
    """Print one neuron's (or direction's) properties, with --topk / --bottomk its top / bottom images."""
    with neuronindex.open(index_dir) as idx:
        n = idx.neuron(neuron_key)
        row = dict(n.row)
        direction = n.direction()
        if direction is not None:
            row.update({f"direction_{k}": v for k, v in direction.items() if k not in ("vector", "weights")})
        lists = {"topk": n.topk().rows() if with_topk else None, "bottomk": n.bottomk().rows() if with_bottomk else None}
        dist = n.distribution() if with_distribution else None
    if dist is not None:
        h = dist["histogram"] or {}
        row.update({f"hist_{k}": v for k, v in h.items() if k not in ("bucket_values", "bucket_counts")})
        lists["classes"] = dist["classes"]
    if fmt == "json":
        out = {k: plain(v) for k, v in row.items()}
        for name, rows in lists.items():
            if rows is not None:
                out[name] = [{k: plain(v) for k, v in r.items()} for r in rows]
        click.echo(json.dumps(out, indent=2))
    else:
        click.echo(to_table([{"property": k, "value": v} for k, v in row.items()]), nl=False)
        for rows in lists.values():
            if rows is not None:
                click.echo(to_table(rows), nl=False)


def _open(index_dir):

    return neuronindex.open(index_dir)


@cli.command("sql")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("query")
@output_options(("table", "csv", "json", "jsonl", "parquet"))
@setting_option("--time-limit", "sql_time_limit")
@setting_option("--max-rows", "sql_max_rows")
def sql_command(index_dir, query, fmt, output, time_limit, max_rows):
    """Run one read-only SQL query (SELECT / WITH / DESCRIBE / EXPLAIN) on the index."""
    with _open(index_dir) as idx:
        result = idx.sql(query, time_limit=time_limit, max_rows=max_rows)
    emit(result.rows(), fmt, output, result.columns)
    if result.meta["truncated"]:
        click.echo(f"truncated: showing the first {max_rows} rows (raise --max-rows)", err=True)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@output_options(("table", "json", "csv", "jsonl"))
def schema(index_dir, fmt, output):
    """Document every table, view and column of the index."""
    with _open(index_dir) as idx:
        rows = idx.schema().rows()
    if fmt != "table":
        emit(rows, fmt, output)
        return
    current = None
    lines = []
    for r in rows:
        if r["table"] != current:
            current = r["table"]
            lines.append(f"\n{r['type']} {r['table']}: {r['table_doc'] or ''}")
        lines.append(f"  {r['column']:<18} {r['data_type']:<10} {r['doc'] or ''}")
    text = "\n".join(lines).lstrip() + "\n"
    if output:
        output.write_text(text)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("query")
@output_options(("table", "csv", "json", "jsonl"))
@click.option("--explain", is_flag=True, help="Print the SQL the query compiles to, and its parameters.")
@setting_option("--time-limit", "search_time_limit")
def search(index_dir, query, fmt, output, explain, time_limit):
    """Find neurons by property: `red conv4`, `dog layer3 gamma>=0.6`, `csi>0.8 sort:-csi limit:10`."""
    with _open(index_dir) as idx:
        if explain:
            sql, params = idx.explain(query)
            click.echo(sql)
            click.echo(f"-- parameters: {params}")
            return
        rows = idx.search(query, time_limit).rows()
    columns = ["key", "color_index", "color_label", "class_index", "top_class", "csi", "auc", "sparsity", "act_max"]
    if rows and "concept" in rows[0]:  # an index with dissections: the matched concept or the unit's label
        columns[5:5] = ["concept", "iou"]
    emit(rows, fmt, output, columns if fmt == "table" else None)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "jsonl", "parquet", "html"]), required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--context/--no-context", default=True, show_default=True,
              help="html: also the first top images whole with the heatmap, behind a toggle (loads the model).")
@setting_option("--time-limit", "export_time_limit")
def export(index_dir, query, fmt, output, context, time_limit):
    """Export the ranked result of a search (html: a standalone contact sheet of NFs and crops)."""
    with _open(index_dir) as idx:
        n = idx.export(query, fmt, output, context=context, time_limit=time_limit)
    click.echo(f"wrote {n} neurons to {'standard output' if str(output) == '-' else output}", err=str(output) == "-")


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--to", "folder", required=True, type=click.Path(file_okay=False, path_type=Path))
def dump(index_dir, folder):
    """Write every table of the index as Parquet files into a folder."""
    with _open(index_dir) as idx:
        tables = idx.dump(folder)
    click.echo(f"wrote {len(tables)} tables to {folder}")


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="Only this model.")
@click.option("--class-threshold", type=float, default=None, help="th of the class selectivity index.")
@click.option("-q", "--quiet", is_flag=True)
def indexes(index_dir, model, class_threshold, quiet):
    """Recompute the selectivity indexes (with pass 2, which they derive from), and bring class names and the
    WordNet hierarchy up to date (after installing WordNet, or for an index written before the bundled one)."""

    for done in recompute(index_dir, model, progress=not quiet, class_threshold=class_threshold):
        classes = f"; {done['classes_changed']} classes added or renamed" if done.get("classes_changed") else ""
        click.echo(f"recomputed the indexes of {done['neurons']} neurons of {done['model']}{classes}")


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--image", required=True, type=click.Path(exists=True, dir_okay=False), help="Image file holding the patch.")
@click.option("--box", default=None, help="x0,y0,x1,y1 of the patch in image pixels (default: the centre).")
@click.option("--layer", "--layers", "layer", default="all", show_default=True, help="A layer name or alias, or all.")
@click.option("--model", default=None, help="Model, when the index has several.")
@click.option("-k", "k", default=20, show_default=True)
@click.option("--mode", type=click.Choice(["embedding", "response"]), default="embedding", show_default=True)
@click.option("--space", type=click.Choice(["prototype", "patch"]), default="prototype", show_default=True,
              help="prototype: nearest neurons; patch: nearest stored crops.")
@click.option("--kind", type=click.Choice(["all", *UNIT_KIND_NAMES]), default="all", show_default=True,
              help="Unit kinds to return: channel (neurons), direction (any kind below), atom (nmf, sae); every "
                   "row says its kind.")
@click.option("--all-crops", is_flag=True, help="Patch space: every crop, not one row per unit (its nearest crop).")
@output_options(("table", "csv", "json", "jsonl"))
def nearest(index_dir, image, box, layer, model, k, mode, space, kind, all_crops, fmt, output):
    """Neurons (or stored crops) nearest to an image patch."""
    with _open(index_dir) as idx:
        rows = idx.nearest(image, parse_box(box), layer, k, mode, space, model, kind=kind, per_unit=not all_crops).rows()
    emit(rows, fmt, output)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("neuron_key")
@click.option("-k", "k", default=20, show_default=True)
@click.option("--space", type=click.Choice(["prototype", "signature"]), default="prototype", show_default=True)
@click.option("--kind", type=click.Choice(["all", *UNIT_KIND_NAMES]), default="all", show_default=True,
              help="Unit kinds to return: channel (neurons), direction (any kind below), atom (nmf, sae); every "
                   "row says its kind.")
@output_options(("table", "csv", "json", "jsonl"))
def similar(index_dir, neuron_key, k, space, kind, fmt, output):
    """Neurons similar to a neuron (prototype: same layer; signature: probe activations, any layer)."""
    with _open(index_dir) as idx:
        rows = idx.similar(neuron_key, k, space, kind=kind).rows()
    emit(rows, fmt, output)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("model_a")
@click.argument("model_b")
@click.option("--neuron", "neuron_key", default=None,
              help="A neuron of either model: list the other model's neurons that correlate best with it instead.")
@click.option("--layer", "--layers", "layer", default=None, help="With --neuron: only this layer of the other model.")
@click.option("-k", "k", default=10, show_default=True, help="With --neuron: how many matches.")
@click.option("--similarity", is_flag=True, help="Print the layer-by-layer similarity matrix instead of the layer rows.")
@output_options(("table", "csv", "json", "jsonl"))
def compare(index_dir, model_a, model_b, neuron_key, layer, k, similarity, fmt, output):
    """Two models of one index side by side (Yu et al. 2014): their layers aligned by relative depth, the
    layer-by-layer similarity over shared probe images, or one neuron's best matches in the other."""
    with _open(index_dir) as idx:
        if neuron_key:
            own = idx.neuron(neuron_key).row["model"]
            if own not in (model_a, model_b):
                raise click.UsageError(f"{neuron_key} is a neuron of {own}, not of {model_a} or {model_b}")
            rows = idx.matches(neuron_key, model_b if own == model_a else model_a, k, layer).rows()
        else:
            r = idx.compare(model_a, model_b)
            if similarity:
                sim = r.meta["similarity"]
                if sim is None:

                    raise UsageError(r.meta["problem"])
                rows = [{"layer": x, **{y: v for y, v in zip(sim["layers_b"], line)}}
                        for x, line in zip(sim["layers_a"], sim["matrix"])]
            else:
                keep = ("layer", "neurons", "dead", "sparsity", "colour_selective", "mean_gamma", "mean_csi", "rf_size")
                rows = [{"depth": round(row["depth"], 3),
                         **{f"{model_a}.{c}": (row["a"] or {}).get(c) for c in keep},
                         **{f"{model_b}.{c}": (row["b"] or {}).get(c) for c in keep}} for row in r.rows()]
    emit(rows, fmt, output)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
def vectors(index_dir):
    """(Re)build the FAISS files under INDEX_DIR/vectors from the index's embeddings."""
    click.echo(to_table(build_vectors(index_dir)), nl=False)


@cli.command()
@click.option("--out", default="neuronindex-demo", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the images, the model, the index and the exports (reused on a second run).")
@click.option("--per-class", default=300, show_default=True, help="Training images per class.")
@click.option("--epochs", default=12, show_default=True, help="Training epochs.")
@click.option("--serve", is_flag=True, help="Then open the web gallery on 127.0.0.1.")
@click.option("--port", default=8000, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(out, per_class, epochs, serve, port, quiet):
    """Run the whole job offline: make images, train a small CNN, index it, tour the results."""
    result = run_demo(out, per_class, epochs, progress=not quiet)
    t = result["tour"]
    click.echo(f"\ndemo CNN trained on {per_class} images per class: held-out accuracy {result['accuracy']:.1%}")
    click.echo(f"index: {result['index']}\n\nlayer summary:")
    click.echo(to_table(t["summary"]), nl=False)
    short = ["key", "color_index", "color_label", "class_index", "top_class", "csi"]
    for title, rows in ((f"search 'red {t['first']}':", t["red"]),
                        (f"search 'layer:{t['last']} gamma>=0.9 sort:-csi limit:5':", t["selective"]),
                        (f"search 'round {t['last']}' (an ancestor class: red discs and yellow rings):", t["rounds"]),
                        (f"search 'svd {t['last']}' (the layer's SVD directions, by singular value; Zhang, CS231n):",
                         t["directions"])):
        click.echo(f"\n{title}")
        cols = short if not rows or rows[0].get("kind") == "channel" else ["key", "sv", "explained", "top_class",
                                                                           "class_index", "color_label"]
        click.echo(to_table([{k: r.get(k) for k in cols} for r in rows]), nl=False)
    click.echo(f"\nneurons of {t['last']} nearest to {t['nearest_image']}:")
    click.echo(to_table([{k: r.get(k) for k in ["score", "key", "kind", "top_class", "class_index"]} for r in t["nearest"]]), nl=False)
    click.echo("\nNetwork Dissection with the demo's exact shape and colour masks (units labelled, unique detectors):")
    click.echo(to_table([{k: r[k] for k in ("layer", "category", "units", "unique_detectors", "concepts")}
                         for r in t["detectors"]]), nl=False)
    click.echo(f"\nHTML contact sheet of the first layer's red neurons: {t['sheet']}")
    checks = {"held-out accuracy >= 90%": result["accuracy"] >= 0.9, **t["checks"]}
    click.echo("\nchecks:")
    for name, ok in checks.items():
        click.echo(f"  [{'ok' if ok else 'FAILED'}] {name}")
    click.echo(f"\ndone in {result['seconds']:.0f} s. Try: neuronindex search {result['index']} \"red conv1_1\"")
    if serve:
    
        run_service(result["index"], port=port)
    if not all(checks.values()):
        raise SystemExit(1)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Binding beyond loopback needs --token.")
@click.option("--port", default=8000, show_default=True)
@click.option("--token", default=None, help="Require `Authorization: Bearer TOKEN` on every request.")
@click.option("--workers", default=1, show_default=True,
              help="Server processes (each opens the index read-only; one per core serves the most requests).")
@setting_option("--threads", "serve_threads")
@setting_option("--cache-mb", "response_cache")
@setting_option("--memory-limit", "reader_memory_limit")
@setting_option("--temp-limit", "reader_temp_limit")
@setting_option("--duckdb-threads", "serve_duckdb_threads")
@setting_option("--header-timeout")
@setting_option("--body-timeout")
@setting_option("--max-connections")
@setting_option("--max-client-connections")
def serve(index_dir, host, port, token, workers, threads, cache_mb, memory_limit, temp_limit, duckdb_threads,
          header_timeout, body_timeout, max_connections, max_client_connections):
    """Serve the JSON API (/docs) and the web gallery for INDEX_DIR."""
    if min(header_timeout, body_timeout) <= 0 or min(max_connections, max_client_connections) < 1:
        raise click.UsageError("--header-timeout and --body-timeout must be positive, the connection caps at least 1")
    run_service(index_dir, host, port, token, workers=workers, threads=threads, cache_mb=cache_mb, memory_limit=memory_limit,
        temp_limit=temp_limit, duckdb_threads=duckdb_threads, header_timeout=header_timeout, body_timeout=body_timeout,
        max_connections=max_connections, max_client_connections=max_client_connections)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="Only this model.")
@output_options(("table", "csv", "json", "jsonl", "parquet"))
def summary(index_dir, model, fmt, output):
    """Per layer: neurons, dead, mean alpha, share alpha>=0.4, mean gamma, share gamma>=0.6, CSI, sparsity, AUC."""
    with _open(index_dir) as idx:
        rows = reporting.summary(idx, model)
    emit(rows, fmt, output)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="Only this model.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="HTML file.")
@click.option("--png-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Also write each figure.")
def report(index_dir, model, output, png_dir):
    """Write Rafegas et al. 2020's figures for the index as one self-contained HTML report."""
    with _open(index_dir) as idx:
        written = reporting.render(idx, output, model, png_dir)
    click.echo(f"wrote {output}" + (f" and {len(written)} figures to {png_dir}" if png_dir else ""))


@cli.command()
@output_options(("table", "csv", "json", "jsonl"))
def settings(fmt, output):
    """Every threshold and default neuronindex uses, with what it means."""
    emit(settings_table.rows(), fmt, output)


@cli.group()
def directions():
    """Directions of a layer (Zhang (CS231n)): SVD, random and user vectors, and learned dictionaries' atoms
    (NMF, sparse autoencoders), indexed like neurons."""


@directions.command("add")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layer", "--layers", "layer", required=True, help="Layer as selected at ingest (or MODEL/LAYER).")
@click.option("--vector", "vector_file", required=True, type=click.Path(dir_okay=False),
              help="A .npy array (C,) or (D, C) over the layer's channels, or numbers as text, one vector per line.")
@click.option("--name", "names", multiple=True, help="Name of each vector (default user1, user2, ...).")
@click.option("--model", default=None, help="Model name (needed when the index holds several).")
@click.option("--no-wait", is_flag=True, help="Fail at once when another process is writing the index.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def directions_add(index_dir, layer, vector_file, names, model, no_wait, quiet):
    """Index user directions (e.g. concept vectors) of a stored layer: top and bottom images, NF, indexes."""
    done = directions_job.add(index_dir, layer, directions_job.load_vectors(vector_file), list(names) or None, model,
                    progress=not quiet, wait=not no_wait)
    click.echo(f"indexed {len(done['directions'])} directions of {done['model']}/{done['layer']} over "
               f"{done['images']} images: {', '.join(done['directions'])}")


@directions.command("learn")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layer", "--layers", "layer", required=True, help="Layer as selected at ingest (or MODEL/LAYER).")
@click.option("--kind", "kinds", type=click.Choice(["nmf", "sae"]), multiple=True, required=True,
              help="nmf (CRAFT's non-negative matrix factorisation) or sae (sparse autoencoder); repeat for both.")
@setting_option("--atoms")
@setting_option("--dict-samples")
@setting_option("--dict-positions")
@setting_option("--sae-steps")
@setting_option("--sae-l1")
@click.option("--model", default=None, help="Model name (needed when the index holds several).")
@click.option("--no-wait", is_flag=True, help="Fail at once when another process is writing the index.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def directions_learn(index_dir, layer, kinds, atoms, dict_samples, dict_positions, sae_steps, sae_l1, model, no_wait,
                     quiet):
    """Fit learned dictionaries on a stored layer and index their atoms like neurons."""
    spec = DictionarySpec(atoms=atoms, samples=dict_samples, positions=dict_positions, sae_steps=sae_steps,
                          sae_l1=sae_l1)
    done = directions_job.learn(index_dir, layer, list(kinds), model, spec, progress=not quiet, wait=not no_wait)
    for f in done["fits"]:
        click.echo(f"{done['model']}/{done['layer']}: {f['atoms']} {f['kind']} atoms, R2 {f['r2']:.3f}, "
                   f"{f['l0']:.1f} active per position")
    click.echo(f"indexed {len(done['directions'])} atoms over {done['images']} images")


@directions.command("compare")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="Only this model.")
@output_options()
def directions_compare(index_dir, model, fmt, output):
    """Neurons vs SVD directions vs NMF vs SAE atoms per layer: class purity, colour, redundancy, R^2."""
    with neuronindex.open(index_dir) as idx:
        emit(idx.dictionaries(model).rows(), fmt, output)


@directions.command("list")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layer", "--layers", "layer", default=None, help="Only this layer (as selected, or MODEL/LAYER).")
@output_options()
def directions_list(index_dir, layer, fmt, output):
    """The directions of an index with their singular values and explained variance."""
    with neuronindex.open(index_dir) as idx:
        emit(idx.directions(layer).rows(), fmt, output)


def viz_options(f):
    """Options of an activation-maximisation run (defaults: visualize.VizParams)."""
    d = VizParams()
    for flag, kw in reversed([
        ("--steps", dict(default=d.steps, show_default=True, help="Steps of gradient ascent per optimised image.")),
        ("--seed", dict(default=d.seed, show_default=True, help="Seed of the noise start and the transformations.")),
        ("--lr", dict(default=d.lr, show_default=True, help="Adam learning rate.")),
        ("--param", dict(type=click.Choice(["fourier", "pixel", "raw"]), default=d.parameterization, show_default=True,
                         help="fourier: decorrelated colour + Fourier basis (Olah et al. 2017); pixel: pixels through "
                              "a sigmoid, with L2 and total-variation regularisers and blur (Dai 2020, Øygard 2016); raw: the "
                              "pixels clipped to [0, 1] (what --start uses).")),
        ("--no-decorrelate", dict(is_flag=True, help="fourier: independent RGB planes instead of the data's "
                                                     "decorrelated colours.")),
        ("--jitter", dict(type=float, default=None, help="Random translation per step, px [8 px per 224 px of the optimised image].")),
        ("--scale", dict(default=d.scale, show_default=True, help="Random scaling per step: 1 +- this.")),
        ("--rotate", dict(default=d.rotate, show_default=True, help="Random rotation per step, +- degrees.")),
        ("--l2", dict(type=float, default=None, help="L2 decay of the image around mid-grey [fourier 0, pixel 0.5].")),
        ("--tv", dict(type=float, default=None, help="Total-variation weight [fourier 0, pixel 2].")),
        ("--blur-every", dict(type=int, default=None, help="Blur the image every N steps [fourier never, pixel 4].")),
    ]):
        f = click.option(flag, **kw)(f)
    return f


def viz_params(objective, steps, seed, lr, param, no_decorrelate, jitter, scale, rotate, l2, tv, blur_every, batch_size):

    return VizParams(objective=objective, steps=steps, seed=seed, lr=lr, parameterization=param,
                     decorrelate=not no_decorrelate, jitter=jitter, scale=scale, rotate=rotate, l2=l2, tv=tv,
                     blur_every=blur_every, batch_size=batch_size)


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layers", "--layer", "layer_spec", default=None, help="Stored layers, comma-separated (default: every one).")
@click.option("--model", default=None, help="Only this model.")
@click.option("--objective", type=click.Choice(["unit", "channel"]), default="unit", show_default=True,
              help="unit: the centre unit (its receptive field); channel: the mean of the whole map.")
@click.option("--classes", default=None,
              help="Also class-logit images: dataset (the index's classes the model outputs), a number N (the "
                   "first N of those) or names / output numbers, comma-separated.")
@click.option("--no-neurons", is_flag=True, help="Only the classes.")
@click.option("--per-layer", type=int, default=None, help="Only the first N live units of each layer (a quick look).")
@click.option("--start", "start_image", type=click.Path(dir_okay=False), default=None,
              help="Push this image towards the one class of --classes instead (Dai 2020: a cat made a dog to the "
                   "network); stores the image, its difference and the step the prediction flips.")
@click.option("--prob", is_flag=True, help="Class images maximise the class probability instead of its logit.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --start: also write the image here and OUTPUT-diff.png beside it.")
@viz_options
@setting_option("--batch-size", "viz_batch_size", dest="viz_batch_size")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@setting_option("--checkpoint-every", "viz_checkpoint_every", dest="viz_checkpoint_every")
@click.option("--no-wait", is_flag=True, help="Fail at once when another process is writing the index.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def visualize(index_dir, layer_spec, model, objective, classes, no_neurons, per_layer, start_image, prob, output, steps, seed, lr,
              param, no_decorrelate, jitter, scale, rotate, l2, tv, blur_every, viz_batch_size, device, viz_checkpoint_every, no_wait,
              quiet):
    """Activation maximisation (Dai 2020, Øygard 2016): optimise an image for every neuron of stored layers.

    Resumable and idempotent: a second run with the same options skips what is stored."""

    if start_image is not None:
        if not classes or "," in classes or classes == "dataset":
            raise click.UsageError("--start needs one class: --classes NAME")
        params = viz_params(objective, steps, seed, lr, param, no_decorrelate, jitter, scale, rotate, l2, tv, blur_every, 1)
        done = visualize_job.from_image(index_dir, start_image, classes, model, params, "prob" if prob else "class", device,
                              output, not no_wait)
        flip = f"flips at step {done['flip_step']}" if done["flip_step"] is not None else "does not flip"
        click.echo(f"{done['start']}: {done['before']} -> {done['after']} (p({done['target'][6:]}) = "
                   f"{done['probability']:.3f}); the prediction {flip} of {done['steps']}")
        return
    if classes is not None:
        classes = int(classes) if classes.isdigit() else classes if classes == "dataset" else \
            [c.strip() for c in classes.split(",") if c.strip()]
    if no_neurons and not classes:
        raise click.UsageError("--no-neurons needs --classes")
    params = viz_params(objective, steps, seed, lr, param, no_decorrelate, jitter, scale, rotate, l2, tv, blur_every,
                        viz_batch_size)
    layers = [s.strip() for s in layer_spec.split(",") if s.strip()] if layer_spec else None
    done = visualize_job.visualize_layers(index_dir, layers, model, params, classes, not no_neurons, device, not quiet, viz_checkpoint_every,
                   not no_wait, per_layer, "prob" if prob else "class")
    click.echo(f"optimised {done['optimised']} images in {done['seconds']:.1f} s"
               + (f"; {done['skipped']} already stored with these options" if done["skipped"] else ""))


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default=None, help="The model (needed when the index holds several).")
@click.option("--layer", "--layers", "layer", default=None, help="Stored layer of the feature vectors [the deepest].")
@click.option("--pooling", type=click.Choice(["max", "mean"]), default=None,
              help="Class means of each channel's spatial max or mean [mean when ingested with --spatial-means, "
                   "else max].")
@click.option("--no-wait", is_flag=True, help="Fail at once when another process is writing the index.")
def categories(index_dir, model, layer, pooling, no_wait):
    """Category hierarchy and minimum spanning tree of the classes at a layer (Dai 2020, Algorithm 1).

    Ingest builds it for the deepest layer; this builds it for another layer or pooling, and
    prints the top split, the tree's centre and, for WordNet classes, the agreement with WordNet."""

    done = categories_job.publish_hierarchy(index_dir, model, layer, pooling, not no_wait)
    click.echo(f"{done['model']} {done['layer']} ({done['pooling']} pooling): {done['classes']} classes")
    for side in done["top_split"]:
        shown = ", ".join(side[:12]) + (f", ... ({len(side)})" if len(side) > 12 else "")
        click.echo(f"  top branch: {shown}")
    click.echo(f"  minimum spanning tree: centre {done['centre']}, hub {done['hub']}")
    if done["wordnet"]:
        w = done["wordnet"]
        click.echo(f"  WordNet: Spearman {w['correlation']:.3f} (shuffled labels {w['baseline']:.3f}); "
                   f"siblings merge lower with probability {w['sibling_auc']:.3f} ({w['sibling_pairs']} pairs)")


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--class", "class_name", required=True, help="Class name or WordNet id (an inner class takes the images "
                                                              "of every class under it).")
@click.option("--layer", "--layers", "layer", default=None, help="Stored layer [the deepest].")
@click.option("--model", default=None, help="The model (needed when the index holds several).")
@click.option("--pooling", type=click.Choice(["max", "mean"]), default="max", show_default=True,
              help="Each filter's map pooled per image by its spatial max or mean.")
@setting_option("--max-images", "tree_max_images", dest="tree_max_images")
@click.option("--seed", default=0, show_default=True, help="Seed of the image sample above --max-images.")
@click.option("--no-wait", is_flag=True, help="Fail at once when another process is writing the index.")
def tree(index_dir, class_name, layer, model, pooling, tree_max_images, seed, no_wait):
    """Filter prediction tree of a class at a layer (Dai 2020, Algorithm 2), built and stored."""
    done = categories_job.tree(index_dir, class_name, layer, model, pooling, tree_max_images, seed, not no_wait)
    sample = f" (a sample of {done['class_images']})" if done["images"] < done["class_images"] else ""
    click.echo(f"{done['model']} {done['layer']}, class {done['class']}: {done['images']} images{sample}, "
               f"{done['filters']} filters, {done['merges']} merges in {done['seconds']:.1f} s")
    click.echo(f"  the root's children: {done['root_children']}, reaching {done['reachable_at_top']} filters")
    click.echo(f"  critical filters of the last merges: {', '.join(map(str, done['first_critical']))}")
    click.echo(f"  gallery: /tree/{done['model']}/{done['layer']}/{done['class']}")


@cli.command("map")
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--layers", "--layer", "layer_spec", default=None, help="Stored layers, comma-separated (default: every one).")
@click.option("--model", default=None, help="Only this model.")
@click.option("--space", type=click.Choice(["neurons", "crops", "both"]), default="neurons", show_default=True,
              help="neurons: one point per neuron (prototype embedding); crops: one per stored top crop (patch "
                   "embedding).")
@click.option("--method", type=click.Choice(["tsne", "umap"]), default="tsne", show_default=True,
              help="t-SNE (scikit-learn) or UMAP (pip install 'neuronindex[umap]').")
@setting_option("--perplexity", "map_perplexity", dest="map_perplexity")
@setting_option("--neighbors", "map_neighbors", dest="map_neighbors")
@click.option("--seed", default=0, show_default=True, help="Seed of the layout.")
@click.option("--force", is_flag=True, help="Remake maps that are up to date.")
@click.option("--no-wait", is_flag=True, help="Fail at once when another process is writing the index.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def map_command(index_dir, layer_spec, model, space, method, map_perplexity, map_neighbors, seed, force, no_wait, quiet):
    """Representation maps (Yu et al. 2014): 2-D t-SNE / UMAP layouts of a layer's neurons or crops.

    Maps up to date with the same options are kept; stale ones (re-ingested embeddings) remade."""

    layers = [s.strip() for s in layer_spec.split(",") if s.strip()] if layer_spec else None
    spaces = ("neurons", "crops") if space == "both" else (space,)
    for r in maps_job.make_maps(index_dir, layers, model, spaces, method, seed, map_perplexity, map_neighbors, force,
                      not quiet, not no_wait):
        took = f" in {r['seconds']:.1f} s" if "seconds" in r else ""
        click.echo(f"{r['model']} {r['layer']} {r['space']}: {r['points']} points, {r['status']}{took}")


@cli.command()
@click.argument("index_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--concepts", default="colour", show_default=True,
              help="Concept set: colour (every pixel of the model's own images named by the colour model), or a "
                   "folder in the Broden layout (index.csv, label.csv) or the plain one (labels.csv, images/, "
                   "masks/<category>/).")
@click.option("--layers", "--layer", "layer_spec", default=None, help="Stored layers, comma-separated (default: every one).")
@click.option("--model", default=None, help="The model (needed when the index holds several).")
@click.option("--limit", type=int, default=None, help="Only the first N images.")
@click.option("--no-wait", is_flag=True, help="Fail at once when another process is writing the index.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def dissect(index_dir, concepts, layer_spec, model, limit, no_wait, quiet):
    """Network Dissection (Bau et al. 2017): every unit's IoU with each concept's masks, stored.

    A unit's maps are thresholded at the top 0.5% of all its values (dissect_quantile), upsampled
    by its receptive field; its label is its best concept where the IoU exceeds 0.04 (dissect_iou)."""
    layers = [s.strip() for s in layer_spec.split(",") if s.strip()] if layer_spec else None
    report = dissect_job.dissect(index_dir, concepts, layers, model, limit, progress=not quiet, wait=not no_wait)
    for r in report:
        click.echo(f"{r['model']} {r['layer']}: {r['interpretable']} of {r['units']} units interpretable "
                   f"({r['labels'] or 'none'}) in {r['seconds']:.1f} s")
    if report and report[0]["skipped"]:
        click.echo(f"skipped {report[0]['skipped']} concept images that could not be read", err=True)
