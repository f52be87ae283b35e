"""`sencache` command line: a thin shell over the library.

Each subcommand lives with the code it drives: a module listed in COMMANDS provides
``add_cli(subparsers)``, which registers its parser and sets ``func`` to a handler taking the
parsed arguments. Errors a user can fix (SenCacheError, FileNotFoundError, ValueError from bad
input) print one line and exit with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = [
    "sencache.commands.demo",
    "sencache.commands.generate",
    "sencache.calibrate",
    "sencache.commands.plot_profile",
    "sencache.compare",
    "sencache.commands.judge",
    "sencache.commands.audit",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sencache", description="Sensitivity-aware caching for diffusers video models")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"sencache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that command is not built yet
                continue
            raise
        module.add_cli(sub)
    return parser


def main(argv=None) -> int:
    from .errors import SenCacheError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except (SenCacheError, FileNotFoundError) as exc:
        print(f"sencache {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sencache {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
