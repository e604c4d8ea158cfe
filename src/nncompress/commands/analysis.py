"""`nncompress analyze`: thin command over `nncompress.analysis.analyze(model, input_shape, value_bits)`."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from nncompress.core.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command("analyze")
    def analyze_cmd(
        model: str = typer.Option(..., "--model", help="Model name (lenet300, lenet5, ...; see build_model)."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz path: gives the input shape and classes."),
        weights: Path | None = typer.Option(None, "--weights", help="Weights (.safetensors) to analyse; default: a fresh initialisation."),
        bits: int = typer.Option(32, "--bits", help="Bits per stored weight value for the byte counts (1..64)."),
        mac_type: str = typer.Option("fp32", "--mac-type", help="Arithmetic for the energy estimate: fp32, fp16, bf16, int32, int8, int4."),
        weight_format: str = typer.Option("dense", "--weight-format", help="Stored weights read for the energy estimate: dense or csr."),
        weight_memory: str = typer.Option("dram", "--weight-memory", help="Where the weights are read from for the energy estimate: dram or sram."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
        out: Path | None = typer.Option(None, "--out", help="Also write the analysis as JSON to this file (atomically)."),
    ) -> None:
        """Parameters, non-zeros, sparsity, MACs, dense/COO/CSR/CSC bytes and an energy estimate per layer and in total."""
        from nncompress.analysis import analyze
        from nncompress.architectures import build_model
        from nncompress.core.io import atomic_write_text, load_weights
        from nncompress.data import load_dataset

        from nncompress.commands.common import check_data, check_in_file, check_model, check_out_file

        if not 1 <= bits <= 64:
            raise UserError(f"--bits must be in 1..64, got {bits}")
        from nncompress.analysis.energy import WEIGHT_FORMATS, WEIGHT_MEMORIES, check_mac_type

        check_mac_type(mac_type)
        if weight_format not in WEIGHT_FORMATS or weight_memory not in WEIGHT_MEMORIES:
            raise UserError(f"--weight-format must be one of {', '.join(WEIGHT_FORMATS)} and --weight-memory one of {', '.join(WEIGHT_MEMORIES)}")
        check_model(model), check_data(data), check_in_file(weights, "--weights", "weights file"), check_out_file(out)
        state = load_weights(weights) if weights is not None else None  # fail fast, before loading data
        ds = load_dataset(data)
        net = build_model(model, ds.input_shape, ds.num_classes)
        if state is not None and any(k.endswith(".centroids") for k in state):  # saved while weight-shared
            from nncompress.sharing import load_shared_state_dict

            load_shared_state_dict(net, state)
        elif state is not None:
            from nncompress.core.io import state_dict_mismatch

            problem = state_dict_mismatch(net.state_dict(), state)  # names the first mismatched key and both shapes
            if problem:
                raise UserError(f"weights {weights} do not fit {model} on {data}: {problem}; were they saved for another model or dataset?")
            net.load_state_dict(state, strict=True)
        analysis = analyze(net, ds.input_shape, value_bits=bits, mac_type=mac_type, weight_format=weight_format,
                           weight_memory=weight_memory)
        result = analysis.to_dict()
        result["model"], result["data"] = model, data
        text = json.dumps(result, indent=2)
        if out is not None:
            atomic_write_text(out, text + "\n")
        if as_json:
            typer.echo(text)
        else:
            from rich.console import Console

            console = Console()
            if not console.is_terminal:  # piped or captured: the full table, not one squeezed to 80 columns
                console = Console(width=200)
            console.print(analysis.rich_table(title=f"{model} on {data}"))
