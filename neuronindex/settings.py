"""Every threshold and default of neuronindex, in one table: (name, default, help).

The CLI takes its option defaults and help from here, the library its constants, and the service
shows the table at /api/settings (`neuronindex settings` prints it). A test fails when a setting
has no help or a CLI option disagrees with its setting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str


SETTINGS: tuple[Setting, ...] = (
    # pass 1 and pass 2
    Setting("top_k", 100, "Top images kept per neuron (pass 1)."),
    Setting("batch_size", 64, "Images per forward pass."),
    Setting("probe_size", 2048, "Images in the stored probe sample (signatures, variance ranking)."),
    Setting("curve_len", 400, "Ranks of the normalised activation curve (Rafegas et al. 2020, Fig. 1)."),
    Setting("nf_max", 100, "Most crops averaged into a Neuron Feature (N of Rafegas et al. 2020)."),
    Setting("nf_memory", 512, "MB of Neuron Feature planes made at once in pass 2 (they grow with neurons x field "
                              "area); more neurons are taken in ranges, each one more decode of the images it needs."),
    Setting("nf_threshold", 0.7, "Least relative activation a_j / a_max of an NF crop (Rafegas et al. 2020)."),
    Setting("hist_bins", 32, "Equal bins of the stored activation histograms (edges/counts); the streamed "
                             "logarithmic buckets are kept too."),
    Setting("bottom_k", 20, "Bottom images kept per neuron and direction: the lowest activations (Zhang (CS231n))."),
    # directions (Zhang (CS231n))
    Setting("directions", "none", "Directions indexed beside the neurons (Zhang (CS231n)): svd, random, and learned "
                                  "dictionaries nmf, sae, joined by commas, or none. They cost one more forward pass "
                                  "over the images."),
    Setting("direction_pooling", "max", "Pooling of each channel's map into the image x channel matrix: max "
                                        "(the neurons' activation) or mean."),
    Setting("svd_rank", "kaiser", "SVD directions kept: kaiser (eigenvalues of the correlation matrix > 1), "
                                  "var:F (variance share F), sv:S (singular values >= S, Zhang (CS231n)) or N."),
    Setting("svd_max", 8, "Most SVD directions per layer (Zhang (CS231n) kept 8 for pool5)."),
    Setting("random_directions", 4, "Random directions per layer past the variance cut-off, and as many "
                                    "unconstrained ones as the baseline (Zhang (CS231n))."),
    Setting("random_quantile", 0.95, "Variance cut-off of filtered random directions: this quantile of the "
                                     "variances of 1,000 random directions."),
    # learned dictionaries (CRAFT's NMF, sparse autoencoders): --directions nmf,sae
    Setting("atoms", 16, "Atoms per layer of each learned dictionary (nmf, sae), at most half the layer's channels."),
    Setting("dict_samples", 16384, "Activation vectors per layer the dictionaries are fitted on: a uniform sample "
                                   "of (image, position) pairs taken in pass 1 (memory: this x channels floats)."),
    Setting("dict_positions", 16, "Map positions per image offered to the dictionaries' sample (all of smaller maps)."),
    Setting("sae_steps", 300, "Adam steps (256 vectors each) of a sparse autoencoder."),
    Setting("sae_l1", 0.05, "L1 weight on a sparse autoencoder's codes (on the sample scaled to unit mean "
                            "squared length): larger, fewer active atoms."),
    # activation maximisation (Dai 2020, Øygard 2016; neuronindex visualize)
    Setting("viz_steps", 256, "Steps of gradient ascent per optimised image."),
    Setting("viz_lr", 0.05, "Adam learning rate of the optimised images."),
    Setting("viz_batch_size", 16, "Neurons of one layer whose images share a forward and backward per step."),
    Setting("viz_scale", 0.05, "Random scaling of an optimised image before each step: 1 +- this."),
    Setting("viz_rotate", 5.0, "Random rotation of an optimised image before each step: +- degrees."),
    Setting("viz_checkpoint_every", 300.0, "Seconds between publishes of finished optimised images (an interrupted "
                                           "run loses at most this much)."),
    # category hierarchy, prediction trees, maps (Dai 2020 and Yu et al. 2014)
    Setting("tree_max_images", 100, "Most images of a class in a filter prediction tree (a seeded sample above it); "
                                    "the tree costs one forward of them and O(images^2 x filters)."),
    Setting("map_perplexity", 30.0, "t-SNE perplexity of the representation maps (at most a third of the points)."),
    Setting("map_neighbors", 15, "UMAP n_neighbors of the representation maps (map --method umap)."),
    # selectivity
    Setting("class_threshold", 1.0, "th of the class selectivity index: M = fewest classes reaching it."),
    Setting("color_threshold", 0.4, "alpha at or above which a neuron is colour selective (Rafegas et al. 2020, Fig. 7)."),
    Setting("color_pair", 0.15, "A two-colour NF is named by both ends (`blue/orange`) when the second end is a "
                                "colour of its own (chromatic, >= 90 degrees of hue away) with at least this share of "
                                "the first end's salience (area x chroma)."),
    Setting("spatial_means", False, "Also take each map's spatial mean in pass 1, for the CSI of Morcos et al. "
                                    "(csi_mean); costs one more read of every map."),
    Setting("class_selective", 0.6, "gamma at or above which a layer summary counts a neuron class selective."),
    Setting("std_floor", 1.0, "Grey levels: the floor of the per-pixel std in alpha's 1/std weights."),
    Setting("dead_relative", 1e-6, "Dead: constant (std <= this x a_max) or a_max <= this x the layer median."),
    Setting("activity_floor", 0.05, "Weak: a_max below this share of the layer's median a_max; weak neurons "
                                    "are left out of selectivity rankings unless the search says `weak`."),
    # search and SQL
    Setting("class_share", 0.5, "A class word matches a neuron whose top class it is, or whose share reaches this."),
    Setting("achromatic_share", 0.5, "black / white / grey match a neuron when that name covers this share."),
    Setting("search_limit", 50, "Rows a search returns without limit:N."),
    Setting("search_max_limit", 100_000, "Largest limit:N."),
    Setting("sql_time_limit", 5.0, "Seconds before a user's SQL query is interrupted."),
    Setting("search_time_limit", 10.0, "Seconds a search may take, parse and query together, on every surface "
                                       "(Python, CLI, HTTP) before it stops with a time-out."),
    Setting("search_max_length", 4000, "Characters of a search's text at most."),
    Setting("export_time_limit", 120.0, "Seconds an export may take (its search, and the whole images with "
                                        "heatmaps of an HTML sheet) before it stops with a time-out."),
    Setting("sql_max_rows", 10_000, "Rows a user's SQL query returns at most (with a truncation notice)."),
    Setting("sql_max_length", 100_000, "Characters of a user's SQL text at most."),
    Setting("reader_memory_limit", "2GB", "DuckDB memory limit of every read-only connection (queries, service)."),
    Setting("reader_temp_limit", "1GB", "DuckDB temp-directory (spill) limit of every read-only connection."),
    Setting("writer_memory_limit", "256MB", "DuckDB memory limit of the connection that writes a publish: written "
                                          "blocks go to the staged file instead of staying cached in memory."),
    Setting("max_pixels", 89_478_485, "Pixels an image may have (checked from its header before decoding), in "
                                      "ingest and uploads alike: larger ones are recorded or refused."),
    Setting("upload_max_pixels", 25_000_000, "Pixels an uploaded image other than a JPEG may have (POST /api/nearest): "
                                             "it is decoded whole before it is reduced, so this bounds the memory "
                                             "one upload takes (a JPEG is decoded at a reduced scale, up to max_pixels)."),
    Setting("upload_max_side", 2048, "Longest side an upload is reduced to when decoded (the box is scaled with it): "
                                     "enough for any model input, and what bounds the memory afterwards."),
    Setting("login_attempts", 5, "Failed logins (form, bearer token or cookie) a client address may make within "
                                 "login_window seconds before it is refused (429) for the rest of the window."),
    Setting("login_window", 60.0, "Seconds over which failed logins are counted per client address."),
    Setting("max_url", 8192, "Characters of a request URL at most (a longer one gets a JSON 414)."),
    # vectors and service
    Setting("exact_limit", 100_000, "Vectors up to which FAISS searches exactly (IVF above)."),
    Setting("max_upload", 10 * 1024 * 1024, "Bytes an uploaded image may have (POST /api/nearest)."),
    Setting("header_timeout", 10.0, "Seconds a client has to send a request's headers (from its first byte; a new "
                                    "connection that sends nothing is closed at the same deadline): then a 408."),
    Setting("body_timeout", 30.0, "Seconds a client has to send a request's body once its headers are in: then a 408."),
    Setting("max_connections", 1000, "Open connections the service holds at most (lowered to fit the process's "
                                     "open-file limit); one beyond gets a 503 at once."),
    Setting("max_client_connections", 64, "Open connections one client address may hold; one beyond gets a 503 at "
                                          "once, so one client's idle sockets cannot starve the others."),
    Setting("serve_threads", 8, "Threads of the service answering queries at once (each with its own DuckDB cursor)."),
    Setting("serve_heavy", 4, "Threads of the service running model forwards, image decodes and figure rendering."),
    Setting("serve_queue", 64, "Requests of either kind waiting beyond those threads before the service answers "
                               "503 (retry later)."),
    Setting("serve_duckdb_threads", 1, "DuckDB threads per query in the service: 1 keeps a slow query to one core "
                                       "while other requests run on the others (the CLI and Python API use all)."),
    Setting("response_cache", 64, "MB of answers (JSON, PNG) the service keeps per index version; the index is "
                                  "immutable between publishes, so a cached answer is exact."),
    # Network Dissection (Bau et al. 2017)
    Setting("dissect_quantile", 0.005, "Top share of all of a unit's map values over the concept images above which "
                                       "its map counts as on (Network Dissection's 0.5%)."),
    Setting("dissect_iou", 0.04, "IoU above which a unit's best concept labels it (Network Dissection's 0.04)."),
    Setting("dissect_top", 5, "Best concepts stored per unit, by IoU."),
    Setting("dissect_mask", 112, "Longer side, in pixels, of the masks maps are compared with (never above the "
                                 "model's input; Broden's masks are 112 px): IoU costs grow with its square."),
    Setting("in_place_publish", True, "Small publishes (a map, a tree, a category hierarchy, a batch of optimised "
                                      "images) write into the index in one transaction when no reader has it open, "
                                      "instead of into a copy of it; off: always a copy."),
    Setting("image_cache", 64, "MB of decoded source images (as the model saw them) kept for crops, per opened index."),
)

BY_NAME = {s.name: s for s in SETTINGS}


def default(name: str) -> Any:
    """The default of a setting (KeyError for an unknown name: a typo is a bug)."""
    return BY_NAME[name].default


def rows() -> list[dict]:
    return [{"name": s.name, "default": s.default, "help": s.help} for s in SETTINGS]


class Settings:
    """The values a reader, a job or the service runs with: every setting of the table, each its
    default unless given, read as attributes (`Settings(search_time_limit=2).search_time_limit`).
    Made once and passed down (to `Index`, `create_app`) instead of module constants frozen at
    import, so two indexes or apps in one process can run with different limits."""

    __slots__ = ("_values",)

    def __init__(self, **values: Any):
        unknown = sorted(set(values) - set(BY_NAME))
        if unknown:
            raise KeyError(f"unknown setting(s) {', '.join(unknown)}")
        object.__setattr__(self, "_values", {s.name: values.get(s.name, s.default) for s in SETTINGS})

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}") from None

    def __setattr__(self, name, value):
        raise AttributeError("Settings are fixed once made; make another with replace()")

    def changed(self) -> dict[str, Any]:
        """The values that differ from the table's defaults (what a worker process is sent)."""
        return {k: v for k, v in self._values.items() if v != BY_NAME[k].default}

    def replace(self, **values: Any) -> "Settings":
        return Settings(**{**self._values, **values})

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in self.changed().items())})"
