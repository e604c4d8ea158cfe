"""`nncompress search` and `nncompress early-exit`: thin commands over `search.run_search` / `search.run_early_exit`."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from nncompress.core.errors import UserError


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"{option} must be comma-separated integers like 3,8; got '{text}'") from None


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"{option} must be comma-separated numbers like 0.5,1; got '{text}'") from None


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search_cmd(
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz path."),
        strategy: str = typer.Option("evolution", "--strategy", help="random, evolution, both (random + evolution) or reinforce (REINFORCE controller, Zoph & Le 2017)."),
        trials: int = typer.Option(8, "--trials", help="Architectures to train and time, per strategy."),
        epochs: int = typer.Option(1, "--epochs", help="Training epochs per candidate."),
        n_train: int | None = typer.Option(None, "--n-train", help="Use only the first N training samples."),
        target_ms: float | None = typer.Option(None, "--target-ms", help="Latency target T; default: the baseline's measured latency."),
        alpha: float = typer.Option(-0.07, "--alpha", help="Reward exponent when LAT <= T."),
        beta: float = typer.Option(-0.07, "--beta", help="Reward exponent when LAT > T."),
        threads: int = typer.Option(1, "--threads", help="Torch threads for training and latency."),
        resource: str = typer.Option("latency", "--resource", help="What the reward trades accuracy against: latency (measured) "
                                     "or energy (Horowitz 45 nm estimate from MACs and weight reads)."),
        target_energy_pj: float | None = typer.Option(None, "--target-energy-pj", help="Energy target E with --resource energy; "
                                                      "default: the baseline's estimate."),
        seed: int = typer.Option(0, "--seed"),
        out: Path | None = typer.Option(None, "--out", help="Directory for search.json and pareto.png."),
        as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    ) -> None:
        """Platform-aware search of a MobileNet-style space: reward ACC·(LAT/T)^w against measured latency."""
        from nncompress.search import run_search

        from nncompress.commands.common import check_data, check_float, check_int, check_out_dir, check_seed
        from nncompress.search.platform_search import STRATEGIES

        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        if strategy not in STRATEGIES:
            raise UserError(f"--strategy: unknown strategy '{strategy}': use one of {', '.join(STRATEGIES)}")
        check_data(data), check_seed(seed), check_int(trials, "--trials", 1, 100_000), check_int(epochs, "--epochs", 1, 100_000)
        check_int(n_train, "--n-train", 2), check_float(target_ms, "--target-ms", 0.0, lo_open=True)
        check_float(alpha, "--alpha", -10.0, 10.0), check_float(beta, "--beta", -10.0, 10.0)
        if resource not in ("latency", "energy"):
            raise UserError(f"--resource: unknown resource '{resource}': use latency or energy")
        check_float(target_energy_pj, "--target-energy-pj", 0.0, lo_open=True)
        if out is not None:
            check_out_dir(out)
        r = run_search(data, strategy, trials, epochs, n_train=n_train, target_ms=target_ms, alpha=alpha, beta=beta,
                       threads=threads, seed=seed, out_dir=out, resource=resource, target_energy_pj=target_energy_pj)
        if as_json:
            typer.echo(json.dumps(r, indent=2))
            return
        b, best = r["baseline"], r["best"]
        typer.echo(f"target T = {r['target_ms']:.3f} ms ({threads} thread(s)); {len(r['candidates'])} candidates; "
                   f"Pareto front: {', '.join(r['pareto'])}")
        for c in (b, best):
            test = f"test top-1 {c['test_top1']:.2f}%  " if "test_top1" in c else ""
            typer.echo(f"{c['name']:>24}: val top-1 {c['top1']:.2f}%  {test}{c['latency_ms']:.3f} ms  {c['params']:,} params  "
                       f"{c['macs']:,} MACs  reward {c['reward']:.3f}")
        typer.echo(f"chosen on validation; test top-1 measured once for the winner and the baseline. "
                   f"Best beats the baseline on the (validation) reward: {r['best_beats_baseline']}")

    @app.command("early-exit")
    def early_exit_cmd(
        model: str = typer.Option("mobilenet_v1", "--model", help="A sequential-style model from `nncompress zoo list`."),
        data: str = typer.Option("mnist5k", "--data", help="digits, mnist5k or an .npz path."),
        exits: str | None = typer.Option(None, "--exits", help="Layer indices to attach exits after, e.g. 3,8; default: 1/3 and 2/3 of the way."),
        weights: str | None = typer.Option(None, "--exit-weights", help="Loss weight per exit, e.g. 0.5,0.5 (default 1 each)."),
        width: float | None = typer.Option(None, "--width", help="Width multiplier of the backbone."),
        epochs: int = typer.Option(3, "--epochs"),
        max_drop: float = typer.Option(0.5, "--max-drop", help="Top-1 drop budget (percentage points) for the thresholds."),
        n_train: int | None = typer.Option(None, "--n-train", help="Use only the first N training samples."),
        threads: int = typer.Option(1, "--threads"),
        seed: int = typer.Option(0, "--seed"),
        save: Path | None = typer.Option(None, "--save", help="Write the trained net's weights (with thresholds) as .safetensors."),
        out: Path | None = typer.Option(None, "--out", help="Write the report as JSON (atomically)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Attach exits, train jointly, calibrate per-exit confidence thresholds, report accuracy vs MACs and latency."""
        from nncompress.core.io import atomic_write_text, save_weights
        from nncompress.search import run_early_exit

        if epochs < 1 or threads < 1:
            raise UserError(f"--epochs and --threads must be >= 1, got {epochs} and {threads}")
        from nncompress.commands.common import check_data, check_float, check_int, check_model, check_out_file, check_seed

        check_model(model), check_data(data), check_seed(seed), check_int(n_train, "--n-train", 2)
        check_float(max_drop, "--max-drop", 0.0, 100.0), check_float(width, "--width", 0.0, 10.0, lo_open=True)
        exit_after, exit_weights = _ints(exits, "--exits"), _floats(weights, "--exit-weights")
        for w in exit_weights or []:
            check_float(w, "--exit-weights", 0.0)
        check_out_file(save, "--save"), check_out_file(out)  # before the joint training
        net, r = run_early_exit(model, data, exit_after, epochs, exit_weights=exit_weights,
                                max_drop_pp=max_drop, n_train=n_train, threads=threads, seed=seed,
                                model_kwargs=None if width is None else {"width_mult": width})
        if save is not None:
            save_weights(net.state_dict(), save, metadata={"model": model, "exit_after": json.dumps(r["exit_after"])})
        text = json.dumps(r, indent=2)
        if out is not None:
            atomic_write_text(out, text + "\n")
        if as_json:
            typer.echo(text)
            return
        typer.echo(f"exits after layers {r['exit_after']}, thresholds {[round(t, 4) for t in r['thresholds']]}")
        typer.echo(f"exit fractions {[round(f, 3) for f in r['exit_fraction']]} (last = full depth)")
        typer.echo(f"top-1 {r['full_top1']:.2f}% -> {r['early_exit_top1']:.2f}% ({-r['top1_drop_pp']:+.2f} pp); "
                   f"MACs/sample {r['full_macs']:,} -> {r['avg_macs']:,.0f} ({100 * r['macs_saving']:.1f}% saved); "
                   f"latency {r['full_ms']:.3f} -> {r['early_exit_ms']:.3f} ms ({threads} thread(s))")
