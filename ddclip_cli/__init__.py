"""The ``ddclip`` command: the library's commands (ddclip_core) and the training pipeline's (training),
composed here above both, so neither imports the other's command line and a broken training
dependency cannot remove ``ddclip train``: that command then fails with an error naming what is missing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from ddclip_core import __version__
from ddclip_core import cli as core_cli
from ddclip_core.hub import RandomWeightsWarning
from training import cli as training_cli

OUR_MODULES = r"(ddclip_core|ddclip_cli|ddclip_ros|training)(\.|$)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddclip",
        description="Duoduo CLIP: multi-view shape embeddings in CLIP's text space.",
        epilog="Run `ddclip COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"ddclip {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    core_cli.register(commands)
    training_cli.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ddclip ARGV``; returns the exit status. Callable from Python too: the logging handler (on the
    root logger, beside any of the caller's) and the warning filters it sets last only for the call; not
    from several threads at once, as logging and warning settings are the process's."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()  # sys.stderr as it is now (a caller may have redirected it)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not args.verbose:  # faiss logs which CPU build it tried at INFO: noise unless debugging
        handler.addFilter(lambda record: record.levelno >= logging.WARNING or not record.name.startswith("faiss"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            # the libraries the commands import (torch, open_clip, Ray) may deprecate things at import
            # time: theirs to fix, so shown only when our own code calls something deprecated
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("default", category=DeprecationWarning, module=OUR_MODULES)
            warnings.simplefilter("ignore", RandomWeightsWarning)  # load_model also logs it; say it once
            return _run(args)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except ImportError as exc:
        print(
            f"ddclip {args.command}: error: a dependency is missing ({exc}); "
            "`pip install 'ddclip-py[train]'` installs the training pipeline's",
            file=sys.stderr,
        )
        return 2
    except (ValueError, OSError, TypeError, ConnectionError, RuntimeError) as exc:  # OSError: names its path
        print(f"ddclip {args.command}: error: {exc}", file=sys.stderr)
        return 2
