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


def _one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so an error is always exactly one line on stderr."""
    return " ".join(str(text).split())


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() or len(text) < 2 else text


def _command_path(e: BaseException, argv: list[str]) -> str:
    """'nncompress prune' from the exception's context, else guessed from argv (click leaves ctx unset sometimes)."""
    ctx = getattr(e, "ctx", None)
    path = getattr(ctx, "command_path", None)
    if path:
        return str(path)
    words = ["nncompress"]
    group = typer.main.get_command(app)
    for arg in argv:
        sub = getattr(group, "commands", {}).get(arg) if not arg.startswith("-") else None
        if sub is None:
            break
        words.append(arg)
        group = sub
    return " ".join(words)


def _usage_error_line(e: BaseException, argv: list[str]) -> str:
    """One `error:` line for a click/typer usage error: what went wrong, in which command, where to look.

    typer >= 0.29 vendors click as the private `typer._click`, older typer uses the real click; both raise
    exceptions that carry `exit_code` and `format_message()`, so they are recognised by shape, not by import.
    """
    path = _command_path(e, argv)
    sub = path.split(" ", 1)[1] if " " in path else ""
    where = f" for '{sub}'" if sub else ""
    name = type(e).__name__
    message = _one_line(e.format_message()).rstrip(".")
    if name == "NoSuchOption":
        option = getattr(e, "option_name", "") or message.rsplit(" ", 1)[-1]
        possible = sorted(getattr(e, "possibilities", None) or [])
        guess = f" (did you mean {' or '.join(possible)}?)" if possible else ""
        what = f"no such option {option}{where}{guess}"
    elif name == "BadParameter" and (getattr(e, "param", None) is not None or getattr(e, "param_hint", None)):
        hint = getattr(e, "param_hint", None) or e.param.get_error_hint()
        hint = hint if isinstance(hint, str) else " / ".join(hint)
        hint = hint.replace("'", "").replace('"', "")
        reason = _lower_first(_one_line(getattr(e, "message", "") or message).rstrip("."))
        value = ""
        errors = getattr(e.__cause__, "errors", None)  # typer coerces with pydantic: the rejected input is in there
        if callable(errors):
            try:
                value = f" {errors()[0]['input']!r}"
            except Exception:  # noqa: BLE001 - the value is a nicety; the reason is enough
                value = ""
        of = f" of '{sub}'" if sub else ""
        what = f"invalid value{value} for {hint}{of}: {reason}"
    elif name == "UsageError" and message.startswith("No such command"):
        what = _lower_first(message) + (f" in '{sub}'" if sub else "")
    else:
        what = _lower_first(message) + where
    return f"error: {what} (see '{path} --help')"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; bad input of any kind exits 2 with one `error:` line, never a traceback.

    Usage errors (unknown command or option, a value that does not parse or is out of range, a missing
    argument), UserError from the API and OS errors on the user's paths all exit 2; anything else is an
    internal bug and exits 1, still with one line. NNCOMPRESS_DEBUG=1 re-raises for a full traceback.
    """
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao\..*")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("NNCOMPRESS_DEBUG"))
    try:
        app(args=argv, prog_name="nncompress", standalone_mode=False)
    except UserError as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:  # --help and friends end this way under standalone_mode=False
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - the one place every failure becomes one line
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `nncompress` / `nncompress zoo`: the help was shown
            sys.exit(0)
        if isinstance(getattr(e, "exit_code", None), int) and callable(getattr(e, "format_message", None)):
            if debug:
                raise
            code = e.exit_code
            print(_usage_error_line(e, argv) if code == 2 else f"error: {_one_line(e.format_message())}", file=sys.stderr)
            sys.exit(2 if code in (1, 2) else code)
        if debug:
            raise
        if isinstance(e, OSError) and (e.filename or e.strerror):  # a path the user gave: unwritable, missing, a folder
            where = f": {e.filename}" if e.filename else ""
            print(f"error: {_lower_first(e.strerror or type(e).__name__)}{where} (check the path and its permissions)",
                  file=sys.stderr)
            sys.exit(2)
        print(f"error: internal error {type(e).__name__}: {_one_line(e)[:300]} "
              "(a bug in nncompress; set NNCOMPRESS_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(1)
