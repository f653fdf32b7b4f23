"""The property search language: the question a user would type, compiled to parameterised SQL.

    red conv4                      red-selective neurons of layer conv4
    red-selective conv4 neurons    the same; filler words and -selective are understood
    dog layer3                     neurons whose top images are dogs (any breed under `dog`)
    class:ladybug gamma>=0.6       class filter and a comparison on an index
    color:blue alpha>0.5 sort:-alpha limit:20
    red conv1 chroma>0.3           red by name, selective by mean chroma (flat colour NFs)
    dead layer:conv2
    weak conv3                     neurons below the activity floor (left out of selectivity rankings)
    csi>0.8 model:resnet20
    svd conv19                     the SVD directions of conv19 (Zhang (CS231n)), by singular value
    kind:random explained>0.02     random directions; `directions` = every kind; sv>50 on directions
    disc conv3_1                   units Network Dissection labels `disc` (neuronindex dissect)
    concept:wheel iou>0.05         units with `wheel` among their best concepts at IoU > 0.05
    category:texture               units labelled with a concept of the category

Searches return neurons (channels) unless they name a direction kind (svd, random, user,
directions, kind:K, kind:all) or compare a direction-only field (sv, explained, variance).

Bare words resolve, in order, to a layer (name, alias or node), a colour name, a class or an
ancestor class, a dissection concept, a model. A concept (bare, or `concept:NAME`) or a
`category:NAME` matches units it labels (their best concept, IoU above the dissection's
threshold); with an `iou` comparison, any of their stored concepts at that IoU. Results of an
index with dissections carry `concept` and `iou`: the matched concept, else the unit's label. `field OP value` works on every numeric column (FIELDS below, with short
aliases); `sort:[-]field` and `limit:N` order and cut. Without `sort:` the property asked about
ranks the result, strongest first. Words of one kind are alternatives (red blue = red or blue);
kinds combine with AND. User text only ever reaches SQL as bound parameters.
"""
from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field

import duckdb
from duckdb_engine import Dialect
from sqlalchemy import and_, column, false, func, or_, select, table, true

from neuronindex import store
from neuronindex.checks import DICTIONARY_KINDS, DIRECTION_KINDS
from neuronindex.errors import QueryError, QueryTimeout, did_you_mean
from neuronindex.science.colornames import ACHROMATIC
from neuronindex.science.colornames import TERMS as COLOR_NAMES
from neuronindex.science.selectivity import COLOR_THRESHOLD
from neuronindex.settings import Settings

FIELDS = {
    "alpha": "color_index", "color_index": "color_index", "colour_index": "color_index",
    "gamma": "class_index", "class_index": "class_index", "csi": "csi", "auc": "auc", "sparsity": "sparsity",
    "max": "act_max", "act_max": "act_max", "mean": "act_mean", "act_mean": "act_mean", "std": "act_std",
    "act_std": "act_std", "hue": "hue", "cri": "color_response", "color_response": "color_response",
    "self": "nf_self_response", "self_response": "nf_self_response", "nf_self_response": "nf_self_response",
    "m": "class_m", "class_m": "class_m", "channel": "channel", "nf_n": "nf_n", "n": "nf_n",
    "share": "top_class_share", "top_class_share": "top_class_share", "color_share": "color_share",
    "rf": "rf_size", "rf_size": "rf_size", "images": "n_images", "chroma": "mean_chroma", "mean_chroma": "mean_chroma",
    "csi_mean": "csi_mean",
    "sv": "sv", "singular_value": "sv", "explained": "explained", "variance": "dir_variance",
    "dir_variance": "dir_variance", "min": "act_min", "act_min": "act_min",
    "viz": "viz_activation_ratio", "viz_ratio": "viz_activation_ratio", "viz_activation_ratio": "viz_activation_ratio",
    "viz_alpha": "viz_color_index", "viz_color_index": "viz_color_index", "viz_hue": "viz_hue",
}
DIRECTION_FIELDS = {"sv", "explained", "dir_variance", "act_min"}
CONCEPT_FIELDS = {"iou": "iou"}  # compared on the unit's matched concept, not a column of the view
UNIT_KINDS = ("channel", *DIRECTION_KINDS)
KIND_WORDS = {**{k: [k] for k in DIRECTION_KINDS}, "direction": list(DIRECTION_KINDS), "directions": list(DIRECTION_KINDS),
              "atom": list(DICTIONARY_KINDS), "atoms": list(DICTIONARY_KINDS), "channels": ["channel"],
              "channel": ["channel"]}
SELECTIVITY = {"color_index", "class_index", "csi", "csi_mean", "color_response", "mean_chroma", "top_class_share", "class_m",
               "color_share"}
MAX_CLASS_WORDS = 6  # the longest class name matched from consecutive words (`american staffordshire terrier`)
FILLER = {"neuron", "neurons", "unit", "units", "selective", "in", "with", "the", "of", "a", "an", "and", "for",
          "layer", "that", "are", "is", "to", "on", "show", "find", "me", "all"}
COMPARISON = re.compile(r"^([a-z_]+)(>=|<=|!=|==|=|>|<)(.+)$")
OUTPUT = ["id", "key", "model", "layer", "alias", "channel", "kind", "unit", "sv", "explained", "color_index", "mean_chroma", "color_label", "color_name",
          "color_second", "hue_name", "class_index",
          "top_class", "top_class_share", "csi", "auc", "sparsity", "act_max", "nf_self_response", "dead", "nf_n",
          "viz_activation_ratio"]

# neuron_view materialised (store.refresh_search): one table, so DuckDB fetches whole rows for
# the top of the ranking only
view = table("neuron_search", *[column(c) for c in set(OUTPUT) | set(FIELDS.values()) | {"node", "weak", "kind"}])
nclasses = table("class_search", column("neuron_id"), column("class_id"), column("share"), column("rank"))
uconcepts = table("unit_concepts", column("dissection_id"), column("neuron_id"), column("concept_id"), column("iou"),
                  column("rank"))
concepts = table("concepts", column("id"), column("name"), column("category"))
dissections = table("dissections", column("id"), column("iou_threshold"))
ncolors = table("neuron_colors", column("neuron_id"), column("name"), column("share"))


@dataclass
class Vocabulary:
    """What bare words can mean in one index (all lower-case)."""

    layers: dict[str, str] = field(default_factory=dict)  # word -> how it is spelled in the index
    layer_nodes: dict[str, set] = field(default_factory=dict)  # word -> {(model, node)} it names
    classes: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    class_ids: dict[str, list[int]] = field(default_factory=dict)  # class name -> ids (one per dataset)
    concepts: dict[str, str] = field(default_factory=dict)  # dissection concepts
    categories: dict[str, str] = field(default_factory=dict)  # their categories

    @classmethod
    def load(cls, con) -> "Vocabulary":
        vocab = cls()
        rows = con.execute("SELECT DISTINCT m.name, l.name, l.alias, l.node, l.aliases FROM layers l "
                           "JOIN models m ON m.id = l.model_id").fetchall()
        claimed = set()
        for model, name, alias, node, _ in rows:
            for word in {name, alias, node} - {None, ""}:
                vocab.layers[word.lower()] = word
                vocab.layer_nodes.setdefault(word.lower(), set()).add((model, node))
                claimed.add((model, word.lower()))
        for model, _, _, node, aliases in rows:  # conv1..convN of chains, where no layer is named so
            for word in set((aliases or "").split(",")) - {""}:
                if (model, word.lower()) not in claimed:
                    vocab.layers.setdefault(word.lower(), word)
                    vocab.layer_nodes.setdefault(word.lower(), set()).add((model, node))
        for class_id, name, wnid in con.execute("SELECT id, name, wnid FROM classes").fetchall():
            vocab.classes[name.lower()] = name
            vocab.class_ids.setdefault(name, []).append(class_id)
            # a WordNet id names its class too; `crane` names both `crane (n02012849)` and `crane (n03126707)`
            words = [wnid] if wnid and wnid != name else []
            if wnid and name.endswith(f" ({wnid})"):
                words.append(name[: -len(f" ({wnid})")])
            for word in words:
                vocab.classes.setdefault(word.lower(), word)
                vocab.class_ids.setdefault(word, []).append(class_id)
        vocab.models = {n.lower(): n for (n,) in con.execute("SELECT name FROM models").fetchall()}
        for name, category in con.execute("SELECT DISTINCT name, category FROM concepts").fetchall():
            vocab.concepts[name.lower()] = name
            vocab.categories[category.lower()] = category
        return vocab

    def all_words(self) -> list[str]:
        return list(self.layers) + list(COLOR_NAMES) + list(self.classes) + list(self.concepts) + \
            list(self.models) + ["dead", "alive", "weak"] + list(KIND_WORDS)


@dataclass
class Query:
    layers: list[str] = field(default_factory=list)
    colors: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    comparisons: list[tuple[str, str, float]] = field(default_factory=list)
    dead: bool | None = None
    weak: bool | None = None
    kinds: list[str] = field(default_factory=list)  # unit kinds (empty: channels, or directions when asked)
    concepts: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    iou: list[tuple[str, float]] = field(default_factory=list)  # comparisons on the matched concept's IoU
    sort: tuple[str, bool] | None = None  # (column, descending)
    limit: int | None = None  # None: the search_limit setting


def parse(text: str, vocab: Vocabulary, settings: Settings | None = None) -> Query:
    settings = settings or Settings()
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise QueryError(f"cannot read the query ({exc}); close the quotes") from None
    q = Query(limit=settings.search_limit)
    words = [t.strip().strip(",;").lower() for t in tokens]
    i = 0
    while i < len(tokens):
        raw, token = tokens[i], words[i]
        i += 1
        if not token:
            continue
        n = _class_phrase(words, i - 1, vocab)
        if n:  # a class named by several words (`golden retriever`, `great white shark`)
            q.classes.append(vocab.classes[" ".join(words[i - 1:i - 1 + n])])
            i += n - 1
            continue
        if ":" in token and not COMPARISON.match(token):
            key, _, value = token.partition(":")
            _keyword(q, key, value, vocab, raw, settings.search_max_limit)
            continue
        m = COMPARISON.match(token)
        if m:
            name, op, value = m.groups()
            op = "=" if op == "==" else op
            if name in CONCEPT_FIELDS:
                q.iou.append((op, _number(value, raw)))
            else:
                q.comparisons.append((_field(name), op, _number(value, raw)))
            continue
        for suffix in ("-selective", "_selective"):
            if token.endswith(suffix):
                token = token[: -len(suffix)]
        if token in FILLER:
            continue
        if token in ("dead", "alive"):
            q.dead = token == "dead"
        elif token in KIND_WORDS:
            q.kinds += KIND_WORDS[token]
        elif token == "weak":
            q.weak = True
        elif token in vocab.layers:
            q.layers.append(vocab.layers[token])
        elif token in COLOR_NAMES or token == "gray":
            q.colors.append("grey" if token == "gray" else token)
        elif token in vocab.classes:
            q.classes.append(vocab.classes[token])
        elif token in vocab.concepts:
            q.concepts.append(vocab.concepts[token])
        elif token in vocab.models:
            q.models.append(vocab.models[token])
        else:
            raise QueryError(f"unknown word {raw!r}{did_you_mean(token, vocab.all_words() + list(FIELDS))}; "
                             "words name layers, colours, classes, concepts or models; use field>value for numbers")
    return q


def _class_phrase(words: list[str], start: int, vocab: Vocabulary) -> int:
    """How many words from `start` on (2 or more, longest first) name a class; 0 for none."""
    for n in range(min(MAX_CLASS_WORDS, len(words) - start), 1, -1):
        if " ".join(words[start:start + n]) in vocab.classes:
            return n
    return 0


def _keyword(q: Query, key: str, value: str, vocab: Vocabulary, raw: str, max_limit: int) -> None:
    if not value:
        raise QueryError(f"{raw!r} needs a value after the colon")
    if key == "sort":
        descending = value.startswith("-")
        name = value.lstrip("-+")
        q.sort = (name if name in CONCEPT_FIELDS else _field(name), descending)
    elif key == "limit":
        if not value.isdigit() or not 0 < int(value) <= max_limit:
            raise QueryError(f"limit must be a whole number from 1 to {max_limit}, not {value!r}")
        q.limit = int(value)
    elif key == "layer":
        _lookup(q.layers, value, vocab.layers, "layer")
    elif key in ("color", "colour"):
        value = "grey" if value == "gray" else value
        if value not in COLOR_NAMES:
            raise QueryError(f"unknown colour {value!r}{did_you_mean(value, COLOR_NAMES)}; colours are {', '.join(COLOR_NAMES)}")
        q.colors.append(value)
    elif key == "class":
        _lookup(q.classes, value, vocab.classes, "class")
    elif key == "model":
        _lookup(q.models, value, vocab.models, "model")
    elif key in ("concept", "category"):
        known = vocab.concepts if key == "concept" else vocab.categories
        if value not in known:
            raise QueryError(f"unknown {key} {value!r}{did_you_mean(value, list(known))}; "
                             + ("concepts come from neuronindex dissect" if known else
                                "the index has no dissection yet: run neuronindex dissect first"))
        (q.concepts if key == "concept" else q.categories).append(known[value])
    elif key == "kind":
        if value == "all":
            q.kinds += list(UNIT_KINDS)
        elif value in KIND_WORDS:
            q.kinds += KIND_WORDS[value]
        else:
            raise QueryError(f"unknown kind {value!r}{did_you_mean(value, list(UNIT_KINDS))}; kinds are "
                             f"{', '.join(UNIT_KINDS)}, directions or all")
    else:
        raise QueryError(f"unknown keyword {key + ':'!r}"
                         f"{did_you_mean(key, ['sort', 'limit', 'layer', 'color', 'class', 'model', 'kind', 'concept', 'category'])}")


def _lookup(into: list, value: str, known: dict, what: str) -> None:
    if value not in known:
        raise QueryError(f"unknown {what} {value!r}{did_you_mean(value, list(known))}")
    into.append(known[value])


def _field(name: str) -> str:
    if name not in FIELDS:
        raise QueryError(f"unknown field {name!r}{did_you_mean(name, list(FIELDS))}")
    return FIELDS[name]


def _number(value: str, raw: str):
    try:
        number = float(value)
    except ValueError:
        raise QueryError(f"{raw!r}: {value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise QueryError(f"{raw!r}: the value must be a finite number")
    return number


def compile_query(q: Query, vocab: Vocabulary, settings: Settings | None = None) -> tuple[str, list, list[str]]:
    settings = settings or Settings()
    """(parameterised SQL, parameters, output columns)."""
    conditions = []
    columns = [view.c[c] for c in OUTPUT]
    source = view
    rank_by = []
    if q.layers:
        pairs = sorted({pair for w in q.layers for pair in vocab.layer_nodes.get(w.lower(), ())})
        conditions.append(or_(*[and_(view.c.model == m, view.c.node == n) for m, n in pairs]) if pairs else false())
    if q.models:
        conditions.append(view.c.model.in_(q.models))
    if q.dead is not None:
        conditions.append(view.c.dead == (true() if q.dead else false()))
    kinds = sorted(set(q.kinds))
    if not kinds:  # neurons, unless the query compares a field only directions have
        asks = {name for name, _, _ in q.comparisons} | ({q.sort[0]} if q.sort else set())
        kinds = list(DIRECTION_KINDS) if asks & DIRECTION_FIELDS else ["channel"]
    if set(kinds) != set(UNIT_KINDS):
        conditions.append(view.c.kind.in_(kinds))
    chromatic = [c for c in q.colors if c not in ACHROMATIC]
    achromatic = [c for c in q.colors if c in ACHROMATIC]
    if q.colors:
        options = []
        # a colour word means colour selective (alpha >= 0.4) and so named; with an explicit
        # `chroma` comparison the user chose the flat-colour measure instead, so only the name counts
        by_chroma = any(name == "mean_chroma" for name, _, _ in q.comparisons)
        if chromatic:
            selective = true() if by_chroma else view.c.color_index >= COLOR_THRESHOLD
            # either end of a two-colour NF (`orange` finds blue/orange neurons)
            named = view.c.color_name.in_(chromatic) if by_chroma else or_(view.c.color_name.in_(chromatic),
                                                                            view.c.color_second.in_(chromatic))
            options.append(and_(named, selective))
        if achromatic:
            shares = select(ncolors.c.neuron_id).where(ncolors.c.name.in_(achromatic), ncolors.c.share >= settings.achromatic_share)
            options.append(view.c.id.in_(shares))
        conditions.append(or_(*options))
        rank_by.append((view.c.mean_chroma if by_chroma else view.c.color_index if chromatic else view.c.color_share,
                        True))
    if q.classes:
        ids = [i for name in q.classes for i in vocab.class_ids.get(name, [])]
        matched = (select(nclasses.c.neuron_id, func.max(nclasses.c.share).label("class_share"))
                   .where(nclasses.c.class_id.in_(ids), or_(nclasses.c.rank == 1, nclasses.c.share >= settings.class_share))
                   .group_by(nclasses.c.neuron_id).subquery("matched"))
        source = source.join(matched, matched.c.neuron_id == view.c.id)
        columns.append(matched.c.class_share)
        rank_by.insert(0, (matched.c.class_share, True))
    if q.concepts or q.categories or q.iou or (q.sort and q.sort[0] in CONCEPT_FIELDS) or vocab.concepts:
        asked = bool(q.concepts or q.categories or q.iou or (q.sort and q.sort[0] in CONCEPT_FIELDS))
        matched = _concept_match(q).subquery("concept_match")
        source = source.join(matched, matched.c.neuron_id == view.c.id, isouter=not asked)
        columns += [matched.c.concept, matched.c.iou]
        if asked:
            rank_by.insert(0, (matched.c.iou, True))
    # selectivity rankings leave out weak neurons (settings: activity_floor) unless the query asks for them
    selective = bool(q.colors or q.classes) or any(name in SELECTIVITY for name, _, _ in q.comparisons) or (
        q.sort is not None and q.sort[0] in SELECTIVITY)
    if q.weak:
        conditions.append(view.c.weak == true())
    elif selective and q.dead is None:
        conditions.append(view.c.weak == false())
    for name, op, value in q.comparisons:
        col = view.c[name]
        conditions.append({">": col > value, ">=": col >= value, "<": col < value, "<=": col <= value,
                           "=": col == value, "!=": col != value}[op])
        rank_by.append((col, op in (">", ">=", "=", "!=")))
    if q.sort is not None:
        col = matched.c.iou if q.sort[0] in CONCEPT_FIELDS else view.c[q.sort[0]]
        order = [col.desc().nulls_last() if q.sort[1] else col.asc().nulls_last()]
    elif rank_by:
        col, desc = rank_by[0]
        order = [col.desc().nulls_last() if desc else col.asc().nulls_last()]
    elif "channel" not in kinds:  # directions: by singular value, as Zhang (CS231n) ranks them
        order = [view.c.sv.desc().nulls_last()]
    else:
        order = [view.c.act_max.desc().nulls_last()]
    stmt = select(*columns).select_from(source).where(and_(true(), *conditions)).order_by(*order, view.c.id)
    stmt = stmt.limit(q.limit)
    compiled = stmt.compile(dialect=_dialect(), compile_kwargs={"render_postcompile": True})
    params = [compiled.params[name] for name in compiled.positiontup]
    return str(compiled), params, [c.name for c in columns]


def _concept_match(q: Query):
    """Per unit, its best concept among those the query asks for: (neuron_id, concept, iou).
    Without an `iou` comparison only labels count (rank 1, IoU above the dissection's threshold)."""
    conditions = []
    if q.concepts:
        conditions.append(concepts.c.name.in_(q.concepts))
    if q.categories:
        conditions.append(concepts.c.category.in_(q.categories))
    if q.iou:
        for op, value in q.iou:
            col = uconcepts.c.iou
            conditions.append({">": col > value, ">=": col >= value, "<": col < value, "<=": col <= value,
                               "=": col == value, "!=": col != value}[op])
        if not (q.concepts or q.categories):
            conditions.append(uconcepts.c.rank == 1)
    else:
        conditions += [uconcepts.c.rank == 1, uconcepts.c.iou > dissections.c.iou_threshold]
    return (select(uconcepts.c.neuron_id, func.arg_max(concepts.c.name, uconcepts.c.iou).label("concept"),
                   func.max(uconcepts.c.iou).label("iou"))
            .select_from(uconcepts.join(concepts, concepts.c.id == uconcepts.c.concept_id)
                         .join(dissections, dissections.c.id == uconcepts.c.dissection_id))
            .where(and_(true(), *conditions)).group_by(uconcepts.c.neuron_id))


def _dialect():
    """SQLAlchemy's DuckDB dialect (duckdb_engine), with `?` parameters as DuckDB's Python API binds them."""
    return Dialect(paramstyle="qmark")


def search(con, text: str, vocab: Vocabulary | None = None, time_limit: float | None = None,
           settings: Settings | None = None) -> tuple[list[dict], str, list]:
    """Run a search; returns (rows, sql, params). The text's length is capped and the time limit
    (default: the search_time_limit setting) covers the parse and the query: past it the query is
    interrupted with a QueryTimeout."""
    started = time.perf_counter()
    settings = settings or Settings()
    limit = settings.search_time_limit if time_limit is None else time_limit
    if len(text) > settings.search_max_length:
        raise QueryError(f"the search is {len(text):,} characters long; at most {settings.search_max_length:,} (settings: "
                         "search_max_length): use fewer words, or SQL")
    vocab = vocab or Vocabulary.load(con)
    sql, params, columns = compile_query(parse(text, vocab, settings), vocab, settings)
    left = limit - (time.perf_counter() - started)
    timeout = QueryTimeout(f"the search took longer than its {limit:g} s time limit; use fewer words or add a layer")
    if left <= 0:
        raise timeout
    try:
        with store.interrupted_after(con, left):
            rows = con.execute(sql, params).fetchall()
    except duckdb.InterruptException:
        raise timeout from None
    return [dict(zip(columns, r)) for r in rows], sql, params
