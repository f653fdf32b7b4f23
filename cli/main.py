"""`neuronindex` command line: each command parses, calls the library once, and formats.

The group and its shared options live in `group`, the commands in `commands`; importing them
here registers the commands (no module imports this one back).
"""
from __future__ import annotations

from . import commands  # noqa: F401  (registers the commands on the group)
from .group import cli

__all__ = ["cli", "main"]


def main():
    cli(prog_name="neuronindex")


if __name__ == "__main__":
    main()
