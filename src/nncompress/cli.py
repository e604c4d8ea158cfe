"""The `nncompress` command line: thin typer commands over the Python API.

Each topic's commands live in `nncompress/commands/<topic>.py` with `register(app)`;
bad input (UserError) becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings

import typer

from nncompress.core.errors import UserError

COMMAND_MODULES = [
    "nncompress.commands.pruning",
    "nncompress.commands.core",
    "nncompress.commands.analysis",
    "nncompress.commands.distill",
    "nncompress.commands.quantization",
    "nncompress.commands.zoo",
    "nncompress.commands.search",
    "nncompress.commands.structured",
    "nncompress.commands.recipes",
]

app = typer.Typer(
    name="nncompress",
    help="Make trained PyTorch models small and fast: prune, share, Huffman-code, quantize, distil, factorize.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Entry point: run the app; user errors exit 2 with one line, never a traceback."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
    try:
        app(standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        if os.environ.get("NNCOMPRESS_DEBUG"):
            raise
        print(f"error: {type(e).__name__}: {e} (set NNCOMPRESS_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(1)
