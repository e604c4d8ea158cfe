"""What every benchmark script shares: the environment it ran in and the `targets` list its issue names.

Each results JSON carries a top-level ``"targets": [{"name", "target", "measured", "met"}]``: one entry per
target, computed from what the script measured (never typed in by hand), so the README and the issue can
quote it and `tests/test_benchmark_results.py` can check the two agree.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

# CPU features that decide how fast int8 and fp32 kernels can be (x86 /proc/cpuinfo flag names)
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


def cpu_isa() -> dict[str, Any]:
    """The CPU model and which vector/int8 extensions it has, read from /proc/cpuinfo (Linux; empty elsewhere)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    found = [f for f in ISA_FLAGS if f in flags]
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    summary = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")
    return {"cpu": model, "isa": f"{summary} {'with' if vnni else 'without'} VNNI", "flags": found, "vnni": vnni}


def environment(threads: int | list[int] | tuple[int, ...]) -> dict[str, Any]:
    """Versions, thread count(s) and the CPU's ISA: what a reader needs to compare our figures with theirs."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
           "threads": threads, "os_cpu_count": os.cpu_count(), **cpu_isa()}
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    return env


def target(name: str, target: str, measured: Any, met: bool) -> dict[str, Any]:
    """One entry of the `targets` list; `measured` is the figure the script computed (rounded for reading)."""
    if isinstance(measured, float):
        if not math.isfinite(measured):
            raise ValueError(f"target {name!r}: measured value is {measured}; a benchmark never reports a non-finite figure")
        measured = round(measured, 4)
    return {"name": name, "target": target, "measured": measured, "met": bool(met)}


def _json_safe(value: Any) -> Any:
    """`value` with NaN/inf floats (a figure that does not apply, e.g. the output step of an unquantized output) as null:
    strict JSON has no NaN, and a reader must not mistake one for a measurement. Targets are never sanitised: a
    non-finite target figure is refused by `target`."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_results(name: str, payload: dict[str, Any], out: Path | str | None = None) -> Path:
    """Write `payload` (which must hold a non-empty `targets` list) to benchmarks/results/<name>.json atomically."""
    from nncompress.core.io import atomic_write_text

    targets = payload.get("targets")
    if not targets or not all({"name", "target", "measured", "met"} <= set(t) for t in targets):
        raise ValueError(f"benchmark {name}: results need a non-empty 'targets' list of {{name, target, measured, met}}")
    path = Path(out) if out is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = {"benchmark": name, "targets": targets,
               **{k: _json_safe(v) for k, v in payload.items() if k not in ("benchmark", "targets")}}
    atomic_write_text(path, json.dumps(ordered, indent=2, allow_nan=False) + "\n")
    met = sum(t["met"] for t in targets)
    print(f"{name}: {met}/{len(targets)} targets met -> {path}", file=sys.stderr)
    return path


def binomial_gap_pp(p1_pct: float, p2_pct: float, n: int) -> float:
    """Two standard errors (pp) of the difference of two accuracies measured on n test samples each.

    SE(p1 - p2) = sqrt(p1(1-p1)/n + p2(1-p2)/n); with n = 1,000 and p ≈ 0.95 that is about 1 pp, so two
    accuracies closer than ~2 pp on mnist5k's test split are a tie, not an ordering.
    """
    p1, p2 = p1_pct / 100.0, p2_pct / 100.0
    return 200.0 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / max(n, 1))


def ordering(scores: dict[str, float], n: int) -> str:
    """`a > b = c` from best to worst: `>` only where the gap exceeds two binomial standard errors, else `=`."""
    names = sorted(scores, key=scores.get, reverse=True)
    out = names[0]
    for prev, cur in zip(names, names[1:]):
        gap = scores[prev] - scores[cur]
        out += (" > " if gap > binomial_gap_pp(scores[prev], scores[cur], n) else " = ") + cur
    return out
