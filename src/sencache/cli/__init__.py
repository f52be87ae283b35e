"""`sencache` command line: argparse only, one module per command.

Each command module provides ``add_cli(subparsers)``, which registers its parser and sets ``func`` to a
handler taking the parsed arguments: parse, resolve the shared options once (:mod:`sencache.cli.options`),
call the library, print. Errors a user can fix (SenCacheError, and the operating system's refusals: a missing
file, a folder where a file should be, no permission) print one line and exit with status 2 instead of a
traceback (``--debug`` shows it); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import sys

from sencache.cli import audit, calibrate, compare, demo, generate, import_profile, judge, plot_profile
from sencache.errors import SenCacheError
from sencache.version import __version__

COMMANDS = (demo, generate, calibrate, import_profile, plot_profile, compare, judge, audit)
RESUMABLE = ("calibrate", "compare")  # they keep every finished sample / job as it completes


def build_parser() -> argparse.ArgumentParser:
    """The ``sencache`` parser with every command."""
    parser = argparse.ArgumentParser(prog="sencache",
                                     description="Sensitivity-aware caching for diffusers video models")
    parser.add_argument("--version", action="version", version=f"sencache {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_cli(sub)
    return parser


def main(argv=None) -> int:
    """Run ``sencache ARGS``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except (SenCacheError, OSError) as exc:
        if args.debug:
            raise
        print(f"sencache {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in RESUMABLE
        print(f"sencache {args.command}: interrupted" + ("; what finished is kept: the same command with --resume "
                                                        "continues it" if resumable else ""), file=sys.stderr)
        return 130
    return int(result or 0)
