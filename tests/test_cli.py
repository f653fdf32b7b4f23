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
