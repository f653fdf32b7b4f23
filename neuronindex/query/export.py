"""Ranked lists out of an index: CSV, JSON, JSONL, Parquet, a standalone HTML contact sheet,
and `dump`, every table as Parquet for other tools."""
from __future__ import annotations

import base64
import html
import io
import sys
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from neuronindex.errors import UsageError
from neuronindex.formats import FORMATS, render

EXPORT_FORMATS = FORMATS[1:] + ("html",)  # no plain table in files


def ranked(con, rows: list[dict]) -> list[dict]:
    """Search rows -> export rows: rank, key, layer, all indexes, top classes, colour names."""
    ids = [r["id"] for r in rows]
    classes: dict[int, list[str]] = {}
    colours: dict[int, list[str]] = {}
    if ids:
        marks = ",".join("?" * len(ids))
        for nid, name, share in con.execute(
                f"SELECT nc.neuron_id, c.name, nc.share FROM neuron_classes nc JOIN classes c ON c.id = nc.class_id "
                f"WHERE nc.neuron_id IN ({marks}) AND nc.is_leaf AND nc.rank <= 3 ORDER BY nc.neuron_id, nc.rank", ids).fetchall():
            classes.setdefault(nid, []).append(f"{name}:{share:.2f}")
        for nid, name, share in con.execute(
                f"SELECT neuron_id, name, share FROM neuron_colors WHERE neuron_id IN ({marks}) "
                f"ORDER BY neuron_id, share DESC", ids).fetchall():
            if len(colours.setdefault(nid, [])) < 3:
                colours[nid].append(f"{name}:{share:.2f}")
    out = []
    for rank, r in enumerate(rows, 1):
        row = {"rank": rank, **{k: v for k, v in r.items() if k != "id"}}
        row["top_classes"] = "; ".join(classes.get(r["id"], []))
        row["colour_names"] = "; ".join(colours.get(r["id"], []))
        out.append(row)
    return out


CONTEXT_IMAGES = 4  # whole images per neuron in the contact sheet's context view


def contact_sheet(con, rows: list[dict], title: str, context=None) -> str:
    """A standalone HTML page (images inlined) with each neuron's NF, top crops and properties.
    context(key, rank) -> PNG bytes (Index.context): with it, a toggle shows each neuron's first
    CONTEXT_IMAGES top images whole, with its heatmap and field, instead of the crops."""
    keys = [r["key"] for r in rows]
    images, optimised = {}, {}
    if keys:
        marks = ",".join("?" * len(keys))
        for key, nf, sprite in con.execute(
                f"SELECT n.key, f.nf_png, f.sprite_png FROM neuron_features f JOIN neurons n ON n.id = f.neuron_id "
                f"WHERE n.key IN ({marks})", keys).fetchall():
            images[key] = (nf, sprite)
        for key, png in con.execute(
                f"SELECT target, image_png FROM visualizations WHERE target IN ({marks}) AND start IS NULL "
                f"QUALIFY row_number() OVER (PARTITION BY target ORDER BY objective = 'unit' DESC, id DESC) = 1",
                keys).fetchall():
            optimised[key] = png
    shown = ["layer", "color_index", "color_label", "class_index", "top_class", "csi", "auc", "sparsity", "act_max",
             "viz_activation_ratio"]
    body = []
    for r in rows:
        nf, sprite = images.get(r["key"], (None, None))
        cells = [f"<td>{r['rank']}</td>", f"<td><code>{html.escape(r['key'])}</code></td>",
                 f"<td>{_img(nf, 'nf')}</td>"]
        if optimised:
            cells.append(f"<td>{_img(optimised.get(r['key']), 'viz')}</td>")
        views = f"<span class=crops>{_img(separated(sprite), 'crops')}</span>"
        if context is not None and not r.get("dead"):
            views += "<span class=context>" + "".join(_img(context(r["key"], rank), "context")
                                                     for rank in range(1, CONTEXT_IMAGES + 1)) + "</span>"
        cells.append(f"<td>{views}</td>")
        props = "<br>".join(f"{c}: {html.escape(_fmt(r.get(c)))}" for c in shown if r.get(c) is not None)
        props += f"<br>classes: {html.escape(r.get('top_classes', ''))}<br>colours: {html.escape(r.get('colour_names', ''))}"
        cells.append(f"<td class=props>{props}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ border-bottom: 1px solid #ddd; padding: 6px 10px; vertical-align: top; }}
img {{ image-rendering: pixelated; background: #ccc; }} img.nf, img.viz {{ width: 96px; height: 96px; }}
.props {{ font-size: 12px; line-height: 1.5; }} img.context {{ width: 96px; height: 96px; margin-right: 4px; image-rendering: auto; }}
body.show-context span.crops, body:not(.show-context) span.context {{ display: none; }}
</style></head><body>
<h1>{html.escape(title)}</h1><p>{len(rows)} neurons, ranked. Made by neuronindex.
{'<label><input type=checkbox id=toggle onchange="document.body.classList.toggle(&quot;show-context&quot;, this.checked)"> show the top images whole, with the heatmap of where the neuron fires (instead of the crops)</label>' if context is not None else ''}</p>
<table><thead><tr><th>#</th><th>neuron</th><th>Neuron Feature</th>{'<th>optimised image</th>' if optimised else ''}<th>top images</th><th>properties</th></tr></thead>
<tbody>{''.join(body)}</tbody></table></body></html>
"""


def separated(sprite: bytes | None, gap: int = 3, per_row: int = 8, most: int = 24, side: int = 48) -> bytes | None:
    """A stored sprite (square crops side by side) redrawn as rows of `per_row` crops (the first
    `most`, each `side` pixels, nearest-neighbour) with a white gap between crops."""
    if not sprite:
        return sprite

    with Image.open(io.BytesIO(sprite)) as im:
        im = im.convert("RGB")
        t = im.height
        n = min(max(1, im.width // t), most)
        cols, rows = min(n, per_row), -(-n // per_row)
        out = Image.new("RGB", (cols * side + (cols - 1) * gap, rows * side + (rows - 1) * gap), (255, 255, 255))
        for i in range(n):
            r, c = divmod(i, per_row)
            crop = im.crop((i * t, 0, (i + 1) * t, t)).resize((side, side), Image.NEAREST)
            out.paste(crop, (c * (side + gap), r * (side + gap)))
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return buf.getvalue()


def _img(png: bytes | None, cls: str) -> str:
    if not png:
        return ""
    return f'<img class="{cls}" src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{cls}">'


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def export(con, rows: list[dict], fmt: str, path: str | Path, title: str, context=None) -> int:
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    rows = ranked(con, rows)
    data = contact_sheet(con, rows, title, context) if fmt == "html" else render(rows, fmt)
    data = data if isinstance(data, bytes) else data.encode()
    if str(path) == "-":  # standard output, as `-o -` means to every Unix tool

        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        Path(path).write_bytes(data)
    return len(rows)


def dump(con, folder: str | Path) -> list[str]:
    """Every table as FOLDER/<table>.parquet."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for (name,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT internal ORDER BY 1").fetchall():
        table = con.sql(f'SELECT * FROM "{name}"').to_arrow_table()
        pq.write_table(table, folder / f"{name}.parquet")
        written.append(name)
    return written
