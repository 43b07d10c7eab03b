"""The ``renalseg`` command line: argument parsing and error reporting around the engine's functions.

Each subcommand has an ``_add_<name>`` function declaring its arguments and a ``_run_<name>``
function calling the engine. Heavy modules are imported inside the ``_run_`` functions so that
``renalseg --help`` is instant. User errors (``RenalSegError``) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .device import DEVICE_CHOICES
from .errors import RenalSegError

log = logging.getLogger("renalseg")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default: auto = CUDA, then Apple MPS, then CPU)")


# --- info ------------------------------------------------------------------------------------------

def _add_info(sub) -> None:
    sub.add_parser("info", help="show the environment, the compute devices and the bundled model card")


def _run_info(args: argparse.Namespace) -> int:
    import platform

    from .device import describe_devices

    print(f"RenalSeg {__version__}  (Python {platform.python_version()}, {platform.system()} {platform.machine()})")
    for key, value in describe_devices().items():
        print(f"  {key:18s} {value}")
    try:
        from .network import default_model_path, read_model_card

        path = default_model_path()
        card = read_model_card(path)
        print(f"model: {path}")
        print(json.dumps(card, indent=2))
    except (ImportError, RenalSegError) as exc:
        print(f"model: none available ({exc})")
    return 0


# --- the parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renalseg",
        description="Kidney, renal tumor and renal cyst segmentation in CT: auto segmentation, click-to-refine, "
        "meshes and measurements for surgical planning.",
        epilog="Run 'renalseg demo' to segment the bundled sample CT. 'renalseg COMMAND --help' explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"renalseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _ADDERS:
        add(sub)
    return parser


_ADDERS = [_add_info]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    runner = globals()[f"_run_{args.command}"]
    try:
        return int(runner(args) or 0)
    except RenalSegError as exc:
        print(f"renalseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"renalseg {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
