"""Shared bits of the command-line scripts."""

from __future__ import annotations

import sys

from transformers import HfArgumentParser


def parse_args(dataclass_types: tuple, aliases: dict[str, str] | None = None, argv: list[str] | None = None):
    """Parse ``argv`` into the dataclasses; ``aliases`` maps the seed's flag names onto the canonical ones."""
    argv = list(sys.argv[1:] if argv is None else argv)
    aliases = aliases or {}
    argv = [_rename(arg, aliases) for arg in argv]
    parser = HfArgumentParser(dataclass_types)  # its help shows every default
    return parser.parse_args_into_dataclasses(args=argv)


def _rename(arg: str, aliases: dict[str, str]) -> str:
    name, sep, value = arg.partition("=")
    return aliases.get(name, name) + sep + value
