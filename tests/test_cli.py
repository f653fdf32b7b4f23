"""The command line: help everywhere, one-line errors with exit codes, no tracebacks."""
from __future__ import annotations

import json

import pytest

from neuronindex_cli.main import cli


def all_commands():
    return sorted(cli.commands)


@pytest.mark.parametrize("command", all_commands())
def test_every_command_has_help(cli_runner, command):
    result = cli_runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert cli.commands[command].help and len(cli.commands[command].help) > 20


def test_layers_json_has_receptive_field_columns(cli_runner):
    result = cli_runner.invoke(cli, ["layers", "cifar-resnet20", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    conv1 = next(r for r in rows if r["alias"] == "conv1")
    assert (conv1["rf_size"], conv1["rf_stride"], conv1["rf_offset"], conv1["channels"]) == (3, 1, -1, 16)


@pytest.mark.parametrize("args, code, message", [
    (["layers", "resnet18"], 5, "Error: unknown model spec 'resnet18'"),
    (["layers", "cifar-resnet20", "--weights", "/no/such.th"], 5, "Error: checkpoint /no/such.th does not exist"),
    (["images", "/no/such/folder"], 6, "Error: image source /no/such/folder does not exist"),
    (["migrate", "/no/such/index"], 3, "Error: no index at /no/such/index"),
])
def test_bad_input_is_one_line_and_nonzero(cli_runner, args, code, message):
    result = cli_runner.invoke(cli, args)
    assert result.exit_code == code
    assert result.output.strip().startswith(message)
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_unknown_layer_in_ingest_suggests_names(cli_runner, image_folder, tmp_path):
    result = cli_runner.invoke(cli, ["ingest", "--model", "cifar-resnet20", "--images", str(image_folder),
                                     "--layers", "conv99", "--index", str(tmp_path / "idx"), "-q"])
    assert result.exit_code == 3
    assert "did you mean" in result.output
    assert not (tmp_path / "idx" / "index.duckdb").exists()


def test_images_command_counts_classes(cli_runner, image_folder):
    result = cli_runner.invoke(cli, ["images", str(image_folder), "--format", "json"])
    report = json.loads(result.output)
    assert report["images"] == 24 and report["classes"] == {"blue": 8, "green": 8, "red": 8}


def test_settings_table_is_documented_and_the_cli_agrees_with_it(cli_runner):
    """Every setting has help; every CLI option named after a setting defaults to it; the library's
    defaults are the table's."""
    from neuronindex import settings
    from neuronindex.jobs.ingest import IngestParams
    from neuronindex.science.selectivity import COLOR_THRESHOLD

    assert all(s.help and len(s.help) > 15 for s in settings.SETTINGS)
    checked = 0
    for command in cli.commands.values():
        for p in command.params:
            limit = {"search": "search_time_limit", "export": "export_time_limit"}.get(command.name, "sql_time_limit")
            name = {"time_limit": limit, "max_rows": "sql_max_rows"}.get(p.name, p.name)
            if name in settings.BY_NAME and not p.is_flag and p.default is not None:  # None: keep the stored value
                assert p.default == settings.default(name), (command.name, p.name)
                checked += 1
    assert checked >= 8
    params = IngestParams()
    assert (params.top_k, params.nf_threshold, params.class_threshold, params.spatial_means) == tuple(
        settings.default(n) for n in ("top_k", "nf_threshold", "class_threshold", "spatial_means"))
    assert COLOR_THRESHOLD == settings.default("color_threshold")
    from neuronindex.science.optvis.render import VizParams

    v = VizParams()
    assert (v.steps, v.lr, v.batch_size, v.scale, v.rotate) == tuple(
        settings.default(n) for n in ("viz_steps", "viz_lr", "viz_batch_size", "viz_scale", "viz_rotate"))
    result = cli_runner.invoke(cli, ["settings", "--format", "json"])
    assert result.exit_code == 0 and {r["name"] for r in json.loads(result.output)} == set(settings.BY_NAME)
