"""`nncompress zoo list|summary NAME`: thin commands over `architectures.zoo.zoo_list` / `zoo_summary`."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from nncompress.core.errors import UserError


def parse_shape(text: str) -> tuple[int, ...]:
    """'3x224x224' → (3, 224, 224)."""
    try:
        shape = tuple(int(p) for p in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise UserError(f"--input must look like 3x224x224 (C x H x W), got '{text}'") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--input must be three positive sizes C x H x W, got '{text}'")
    return shape


def _console():
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def register(app: typer.Typer) -> None:
    zoo = typer.Typer(help="The model zoo: compact families with their published parameter and MAC counts.",
                      no_args_is_help=True)
    app.add_typer(zoo, name="zoo")

    @zoo.command("list")
    def list_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """Registered models and the published figures we check them against."""
        from rich.table import Table

        from nncompress.architectures.zoo import zoo_list

        rows = zoo_list()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table(title="nncompress model zoo")
        for col in ("name", "description", "published references"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["description"], ", ".join(r["references"]))
        _console().print(table)

    @zoo.command("summary")
    def summary_cmd(
        name: str = typer.Argument(..., help="Model name (see `nncompress zoo list`)."),
        input_shape: str | None = typer.Option(None, "--input", help="C x H x W, e.g. 3x224x224 or 1x28x28; default: ImageNet size."),
        classes: int = typer.Option(1000, "--classes", help="Number of output classes."),
        width: float | None = typer.Option(None, "--width", help="Width multiplier (families that have one)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        out: Path | None = typer.Option(None, "--out", help="Also write the summary as JSON to this file (atomically)."),
    ) -> None:
        """Per-layer output shapes, parameters and MACs; totals next to the published figures."""
        from rich.table import Table

        from nncompress.architectures.zoo import zoo_summary
        from nncompress.core.io import atomic_write_text

        from nncompress.commands.common import check_float, check_model, check_out_file

        if classes < 1:
            raise UserError(f"--classes must be >= 1, got {classes}")
        check_model(name, "NAME"), check_float(width, "--width", 0.0, 10.0, lo_open=True), check_out_file(out)
        kwargs = {} if width is None else {"width_mult": width}
        result = zoo_summary(name, parse_shape(input_shape) if input_shape else None, classes, **kwargs)
        text = json.dumps(result, indent=2)
        if out is not None:
            atomic_write_text(out, text + "\n")
        if as_json:
            typer.echo(text)
            return
        table = Table(title=f"{name} on {'x'.join(map(str, result['in_shape']))}, {classes} classes")
        for col in ("layer", "type", "output", "params", "MACs"):
            table.add_column(col, justify="right" if col in ("params", "MACs") else "left")
        for r in result["layers"]:
            table.add_row(r["name"], r["type"], "x".join(map(str, r["out_shape"])), f"{r['params']:,}", f"{r['macs']:,}")
        table.add_row("total", "", "", f"{result['params']:,}", f"{result['macs']:,}", style="bold")
        ref = result["reference"]
        if ref:
            table.add_row("published", ref["source"], "", f"{ref['params']:,.0f}", f"{ref['macs']:,.0f}", style="italic")
        _console().print(table)
