"""Hostile input, measured: mutated .nnc files, YAML recipes and .npz datasets through the public API and the CLI.

Issue 12's targets: every mutated file gives either a result or the project's own error (`UserError`,
of which `CorruptFileError` is a subclass); no load takes over 1 s; no load allocates over 500 MB; every
CLI run exits 0 or 2, never 1, never with a traceback, never leaving a half-written output.

- .nnc: two real files (LeNet-300-100 and LeNet-5, pruned 90 % and weight-shared), mutated by
  `nncompress.encoding.fuzzing.mutate` (bit flips, byte overwrites, truncation, insertion, deletion,
  field-targeted counts/dims/lengths/widths/dtypes, NaN/inf floats, hostile metadata); "raw" keeps the old
  CRC-32, "crc" recomputes it so the parser behind the checksum is what is tested. Each goes through
  `encoding.read_nnc` and `export.model_from_nnc` (the rebuild that `nncompress decompress` and
  `evaluate --nnc` run).
- YAML: the recipes in recipes/ with byte damage and targeted edits (.inf/.nan/huge numbers, alias bombs,
  deep nesting, huge files, binary junk) through `recipes.schema.load_recipe` (pydantic + schedule checks).
- .npz: valid datasets with byte damage and hostile arrays (NaN, complex, bool, strings, huge or sparse
  labels, 0/1 samples, one class, 1e30 inputs, shape claims the file cannot hold) through `data.load_dataset`.

In-process loads run in 2 worker processes. Memory is measured two ways: each worker lowers its own
RLIMIT_DATA to (its data size after start-up + 500 MiB), so any allocation that would take a load over
500 MB fails — numpy and torch alike, touched or not (a calloc'd array never shows in RSS) — and is counted
as an over-memory load (a MemoryError, or a project error whose message says "allocate"/MemoryError);
and the growth of the worker's peak RSS (ru_maxrss) over its start-up value is reported. Time per load is
the CPU time of the loading thread (the machine is shared; wall time is reported too).

    .venv/bin/python benchmarks/fuzz.py            # ~10-14 min on 2 shared cores
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench_common import environment, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SEED = 12
LIMIT_BYTES = 500 * 2**20
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))  # < 1 for a quick smoke run (targets then not met)
COUNTS = {k: max(2, int(v * SCALE)) for k, v in {"nnc_raw": 10_000, "nnc_crc": 5_200, "yaml": 2_050, "npz": 2_050}.items()}
CLI_RUNS = {k: max(1, int(v * SCALE)) for k, v in {"decompress": 125, "evaluate": 60, "analyze": 65, "check_recipe": 65}.items()}
MEMORY_RE = re.compile(r"MemoryError|allocate", re.IGNORECASE)


# --------------------------------------------------------------------------------------- inputs
def make_nnc_files() -> dict[str, bytes]:
    import torch

    from nncompress.architectures import build_model
    from nncompress.encoding import write_nnc
    from nncompress.export import compress_model
    from nncompress.pruning import LevelPruner, finalize
    from nncompress.sharing import share_weights

    out = {}
    for i, name in enumerate(("lenet300", "lenet5")):
        torch.manual_seed(i)
        net = build_model(name)
        LevelPruner(0.9).prune(net)
        finalize(net)
        share_weights(net, bits={"conv": 8, "linear": 5} if name == "lenet5" else 4)
        out[name] = write_nnc(compress_model(net, {"model": name, "in_shape": [1, 28, 28], "num_classes": 10}))
    return out


def make_npz_files(folder: Path) -> dict[str, bytes]:
    rng = np.random.default_rng(SEED)
    x28 = (rng.random((60, 1, 28, 28)) * 255).astype(np.uint8)
    y = np.arange(60) % 10
    files = {}
    np.savez(folder / "images.npz", x=x28, y=y)
    np.savez_compressed(folder / "features.npz", x=rng.normal(size=(50, 12)).astype(np.float32), y=np.arange(50) % 5)
    for name in ("images", "features"):
        files[name] = (folder / f"{name}.npz").read_bytes()
    return files


def recipe_texts() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted((ROOT / "recipes").glob("*.yaml"))}


_YAML_EDITS = (
    b".inf", b"-.inf", b".nan", b"1e400", b"'nan'", b"1" + b"0" * 40, b"-1" + b"0" * 25, b"null", b"[]", b"{}",
    b"&a [1, 2]", b"*a", b"!!python/object:os.system ls", b"\"\\xff\"", b"{a: {b: {c: {d: 1}}}}", b"0x10", b"1_000_000_000_000",
)


def mutate_yaml(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    kind = ["bytes", "value", "value", "bomb", "nesting", "huge", "junk", "dupkey"][int(rng.integers(8))]
    b = bytearray(data)
    if kind == "bytes":
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(len(b)))
            op = int(rng.integers(3))
            if op == 0:
                b[i] = int(rng.choice(list(b"[]{}&*!:-,.'\"#|>?%@` \n\t0123456789einfa\x00\xff")))
            elif op == 1:
                del b[i : i + int(rng.integers(1, 8))]
            else:
                b[i:i] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 6)), dtype=np.uint8))
    elif kind == "value":  # replace one scalar after a ': ' with a hostile one
        spots = [m.end() for m in re.finditer(rb": ", data)]
        at = spots[int(rng.integers(len(spots)))]
        end = data.find(b"\n", at)
        end = len(data) if end < 0 else end
        b = bytearray(data[:at] + _YAML_EDITS[int(rng.integers(len(_YAML_EDITS)))] + data[end:])
    elif kind == "bomb":
        n, width = int(rng.integers(4, 12)), int(rng.integers(4, 12))
        lines = [b'l0: &l0 [' + b", ".join([b'"lol"'] * width) + b"]"]
        lines += [f"l{i}: &l{i} [".encode() + b", ".join([f"*l{i - 1}".encode()] * width) + b"]" for i in range(1, n)]
        b = bytearray(data + b"\n" + b"\n".join(lines) + b"\n")
    elif kind == "nesting":
        depth = int(rng.choice([33, 200, 5000, 100_000]))
        b = bytearray(data + b"\nx: " + b"[" * depth + b"1" + b"]" * depth + b"\n")
    elif kind == "huge":
        b = bytearray(data + b"\n# " + b"x" * (2 << 20) + b"\n")
    elif kind == "junk":
        b = bytearray(rng.integers(0, 256, size=int(rng.integers(1, 400)), dtype=np.uint8).tobytes())
    else:
        b = bytearray(data + b"\nmodel: lenet5\nmodel: lenet300\n")
    return bytes(b), kind


def _npz_bytes(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npz_claiming(shape) -> bytes:
    import io
    import zipfile

    import numpy.lib.format as npy

    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x.npy", npy.magic(1, 0) + header.getvalue() + b"\0" * 64)
        y = io.BytesIO()
        np.save(y, np.arange(4))
        zf.writestr("y.npy", y.getvalue())
    return buf.getvalue()


def mutate_npz(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    kind = ["bytes", "bytes", "truncate", "arrays", "arrays", "claims"][int(rng.integers(6))]
    if kind == "bytes":
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        return bytes(b), kind
    if kind == "truncate":
        return data[: int(rng.integers(len(data)))], kind
    if kind == "claims":
        return _npz_claiming([int(rng.integers(1, 2**20)) for _ in range(int(rng.integers(2, 5)))]), kind
    n = int(rng.choice([0, 1, 2, 3, 40]))
    x = rng.normal(size=(n, 4, 4)).astype(np.float32)
    y = np.arange(n) % 4
    choice = int(rng.integers(14))
    if choice == 0:
        x[..., 0] = np.nan
    elif choice == 1:
        x = x * np.float32(np.inf)
    elif choice == 2:
        x = x.astype(np.complex64)
    elif choice == 3:
        x = x > 0
    elif choice == 4:
        x = np.full((n, 3), "abc")
    elif choice == 5:
        y = y.astype(np.uint64) + np.uint64(2**63)
    elif choice == 6:
        y = y.copy()
        if n:
            y[0] = 200_000
    elif choice == 7:
        y = np.zeros(n, dtype=np.int64)
    elif choice == 8:
        x = x.astype(np.float64) * 1e30
    elif choice == 9:
        y = y[: max(n - 1, 0)]
    elif choice == 10:
        y = y.astype(np.float32)
    elif choice == 11:
        x = np.zeros((n, 0, 3), dtype=np.float32)
    elif choice == 12:
        y = -y
    else:
        x = x.astype(np.float64) * 1e15 + 1e15
    return _npz_bytes(x=x, y=y), kind


# --------------------------------------------------------------------------------------- worker
def _vm_data() -> int:
    return int(re.search(r"VmData:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(index: int, n_workers: int, tmp: Path, out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from nncompress.core.errors import UserError
    from nncompress.data import load_dataset
    from nncompress.encoding import read_nnc
    from nncompress.encoding.fuzzing import field_map, mutate
    from nncompress.export import model_from_nnc
    from nncompress.recipes.schema import load_recipe

    nnc = {k: (tmp / f"{k}.nnc").read_bytes() for k in ("lenet300", "lenet5")}
    maps = {k: field_map(v) for k, v in nnc.items()}
    npz = {k: (tmp / f"{k}.npz").read_bytes() for k in ("images", "features")}
    recipes = recipe_texts()
    scratch = tmp / f"w{index}"
    scratch.mkdir(exist_ok=True)
    # warm up (first-use imports are start-up cost, not a load's): one valid load of each kind
    for data in nnc.values():
        model_from_nnc(read_nnc(data))
    for name in npz:
        load_dataset(str(tmp / f"{name}.npz"))
    for text in recipes.values():
        load_recipe(text.decode())

    base_data, base_rss = _vm_data(), _maxrss()
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (base_data + LIMIT_BYTES, hard))
    canary = {}  # proof that the limit catches a big allocation, numpy's untouched calloc and torch's alike
    for label, alloc in (("numpy.zeros", lambda: np.zeros(LIMIT_BYTES + (64 << 20), dtype=np.uint8)),
                         ("torch.empty", lambda: torch.empty(LIMIT_BYTES + (64 << 20), dtype=torch.uint8))):
        try:
            alloc()
            canary[label] = "not caught"
        except (MemoryError, RuntimeError) as e:
            canary[label] = f"caught: {type(e).__name__}"

    def nnc_case(family: str, i: int, rng):
        name = ("lenet300", "lenet5")[i % 2]
        data = nnc[name]
        while data == nnc[name]:  # a mutation that changed nothing (a field set to its own value) is drawn again
            data, kind = mutate(nnc[name], rng, recompute_crc=family == "nnc_crc", fields=maps[name])
        return kind, lambda: model_from_nnc(read_nnc(data))

    def yaml_case(family: str, i: int, rng):
        names = sorted(recipes)
        original = data = recipes[names[i % len(names)]]
        while data == original:
            data, kind = mutate_yaml(original, rng)
        path = scratch / "r.yaml"
        path.write_bytes(data)
        return kind, lambda: load_recipe(path)

    def npz_case(family: str, i: int, rng):
        names = sorted(npz)
        original = data = npz[names[i % len(names)]]
        while data == original:
            data, kind = mutate_npz(original, rng)
        path = scratch / "d.npz"
        path.write_bytes(data)
        return kind, lambda: load_dataset(str(path))

    makers = {"nnc_raw": nnc_case, "nnc_crc": nnc_case, "yaml": yaml_case, "npz": npz_case}
    report = {}
    for fam_id, (family, n) in enumerate(COUNTS.items()):
        stats = collections.Counter()
        by_kind = collections.defaultdict(collections.Counter)
        examples = []
        cpu_max = wall_max = 0.0
        family_start = time.perf_counter()
        for i in range(index, n, n_workers):
            rng = np.random.default_rng([SEED, fam_id, i])
            kind, load = makers[family](family, i, rng)
            t_wall, t_cpu = time.perf_counter(), time.thread_time()
            outcome, detail = "loaded", ""
            try:
                load()
            except UserError as e:
                outcome, detail = ("memory", str(e)) if MEMORY_RE.search(str(e)) else ("refused", "")
                if "\n" in str(e):
                    outcome, detail = "multiline", str(e)
            except MemoryError as e:
                outcome, detail = "memory", f"MemoryError: {e}"
            except Exception as e:  # noqa: BLE001 - this is what the benchmark counts
                outcome, detail = "other", f"{type(e).__name__}: {str(e)[:200]}"
                if MEMORY_RE.search(str(e)):
                    outcome = "memory"
            cpu, wall = time.thread_time() - t_cpu, time.perf_counter() - t_wall
            cpu_max, wall_max = max(cpu_max, cpu), max(wall_max, wall)
            stats[outcome] += 1
            by_kind[kind][outcome] += 1
            stats["cpu_over_1s"] += cpu > 1.0
            stats["wall_over_1s"] += wall > 1.0
            if detail and len(examples) < 10:
                examples.append({"case": i, "kind": kind, "outcome": outcome, "error": detail[:300]})
        report[family] = {"counts": dict(stats), "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
                          "max_cpu_s": round(cpu_max, 4), "max_wall_s": round(wall_max, 4), "examples": examples,
                          "seconds": round(time.perf_counter() - family_start, 1)}
    report["rss_growth_bytes"] = _maxrss() - base_rss
    report["canary"] = canary
    report["data_limit_bytes"] = base_data + LIMIT_BYTES
    out.write_text(json.dumps(report))


# --------------------------------------------------------------------------------------- CLI
def cli_cases(tmp: Path, nnc: dict[str, bytes], npz: dict[str, bytes]) -> list[tuple[str, list[str], Path | None, bool]]:
    from nncompress.encoding.fuzzing import mutate

    rng = np.random.default_rng([SEED, 99])
    cli_dir = tmp / "cli"
    cli_dir.mkdir()
    # a 28x28 dataset for evaluate --nnc (inputs match the files' in_shape)
    data28 = cli_dir / "data28.npz"
    np.savez(data28, x=(rng.random((40, 1, 28, 28)) * 255).astype(np.uint8), y=np.arange(40) % 10)
    cases = []
    recipes = recipe_texts()
    for n_case in range(sum(CLI_RUNS.values())):
        cmd_kind = next(k for k, stop in zip(CLI_RUNS, np.cumsum(list(CLI_RUNS.values()))) if n_case < stop)
        folder = cli_dir / f"c{n_case:04d}"
        folder.mkdir()
        name = ("lenet300", "lenet5")[n_case % 2]
        if cmd_kind in ("decompress", "evaluate"):
            valid = n_case % 20 == 0  # a few unmutated files: the happy path must exit 0
            data = nnc[name]
            while not valid and data == nnc[name]:
                data = mutate(nnc[name], rng, recompute_crc=rng.random() < 0.8)[0]
            src = folder / "in.nnc"
            src.write_bytes(data)
            if cmd_kind == "decompress":
                out = folder / "out" / "w.safetensors"
                cases.append((cmd_kind, ["decompress", str(src), "--out", str(out)], out, not valid))
            else:
                cases.append((cmd_kind, ["evaluate", "--nnc", str(src), "--data", str(data28), "--json"], None, not valid))
        elif cmd_kind == "analyze":
            original = data = npz[sorted(npz)[n_case % 2]]
            while data == original:
                data, _ = mutate_npz(original, rng)
            src = folder / "bad.npz"
            src.write_bytes(data)
            out = folder / "out" / "analysis.json"
            cases.append((cmd_kind, ["analyze", "--model", "lenet300", "--data", str(src), "--json", "--out", str(out)], out, True))
        else:
            original = data = recipes[sorted(recipes)[n_case % len(recipes)]]
            while data == original:
                data, _ = mutate_yaml(original, rng)
            src = folder / "bad.yaml"
            src.write_bytes(data)
            cases.append((cmd_kind, ["run-recipe", str(src), "--check"], None, True))
    return cases


def run_cli(case: tuple[str, list[str], Path | None, bool]) -> dict:
    kind, args, out, mutated = case
    exe = ROOT / ".venv" / "bin" / "nncompress"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("NNCOMPRESS_DEBUG", None)
    t0 = time.perf_counter()
    try:
        p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120, env=env)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        rc, err = "timeout", ""
    half_written = False
    if out is not None:
        leftovers = [q.name for q in out.parent.glob("*") if q != out] if out.parent.is_dir() else []
        if leftovers:
            half_written = True
        if out.exists() and rc != 0:
            half_written = True
        if out.exists() and rc == 0 and out.suffix == ".safetensors":
            from safetensors.numpy import load_file

            try:
                load_file(str(out))
            except Exception:  # noqa: BLE001
                half_written = True
    return {"kind": kind, "mutated": mutated, "rc": rc, "traceback": "Traceback" in err, "half_written": half_written,
            "stderr": err.strip().splitlines()[-1][:200] if err.strip() else "", "seconds": round(time.perf_counter() - t0, 2)}


# --------------------------------------------------------------------------------------- main
def target(name: str, goal: str, measured, met: bool) -> dict:
    return {"name": name, "target": goal, "measured": measured, "met": bool(met)}


def main() -> None:
    start = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="nnc-fuzz-"))
    try:
        nnc = make_nnc_files()
        for k, v in nnc.items():
            (tmp / f"{k}.nnc").write_bytes(v)
        npz = make_npz_files(tmp)
        print(f"inputs: .nnc {', '.join(f'{k} {len(v)} B' for k, v in nnc.items())}; .npz {', '.join(f'{k} {len(v)} B' for k, v in npz.items())}", flush=True)

        n_workers = 2
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--worker", str(w), str(n_workers), str(tmp)]) for w in range(n_workers)]
        codes = [p.wait() for p in procs]
        in_process_s = time.perf_counter() - t0
        if any(codes):
            raise SystemExit(f"a worker failed: exit codes {codes}")
        reports = [json.loads((tmp / f"worker{w}.json").read_text()) for w in range(n_workers)]
        families = {}
        for family in COUNTS:
            counts = collections.Counter()
            by_kind = collections.defaultdict(collections.Counter)
            for r in reports:
                counts.update(r[family]["counts"])
                for k, v in r[family]["by_kind"].items():
                    by_kind[k].update(v)
            families[family] = {
                "mutations": sum(counts[o] for o in ("loaded", "refused", "memory", "other", "multiline")),
                "outcomes": {o: counts[o] for o in ("loaded", "refused", "memory", "other", "multiline")},
                "cpu_over_1s": counts["cpu_over_1s"], "wall_over_1s": counts["wall_over_1s"],
                "max_cpu_s": max(r[family]["max_cpu_s"] for r in reports), "max_wall_s": max(r[family]["max_wall_s"] for r in reports),
                "worker_seconds": [r[family]["seconds"] for r in reports],
                "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
                "examples": [e for r in reports for e in r[family]["examples"]][:10],
            }
            f = families[family]
            print(f"{family}: {f['mutations']} mutations, {f['outcomes']}, max {f['max_cpu_s']:.3f} CPU s", flush=True)
        rss_growth = max(r["rss_growth_bytes"] for r in reports)
        print(f"in-process: {in_process_s:.0f} s; peak RSS growth {rss_growth / 2**20:.1f} MiB", flush=True)

        t0 = time.perf_counter()
        cases = cli_cases(tmp, nnc, npz)
        with ThreadPoolExecutor(max_workers=2) as pool:
            cli = list(pool.map(run_cli, cases))
        cli_s = time.perf_counter() - t0
        rcs = collections.Counter(str(c["rc"]) for c in cli)
        bad_cli = [c for c in cli if c["rc"] not in (0, 2) or c["traceback"] or c["half_written"]]
        cli_by_kind = {k: dict(collections.Counter(str(c["rc"]) for c in cli if c["kind"] == k)) for k in CLI_RUNS}
        print(f"CLI: {len(cli)} runs in {cli_s:.0f} s, exit codes {dict(rcs)}, bad {len(bad_cli)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    nr, nc, ya, nz = (families[k] for k in ("nnc_raw", "nnc_crc", "yaml", "npz"))
    targets = [
        target("nnc raw mutations", ">= 10000", nr["mutations"], nr["mutations"] >= 10_000),
        target("nnc CRC-recomputed mutations", ">= 5000", nc["mutations"], nc["mutations"] >= 5_000),
    ]
    for label, fam in ((".nnc", (nr, nc)), ("YAML recipe", (ya,)), (".npz", (nz,))):
        if label != ".nnc":
            targets.append(target(f"{label} mutations", ">= 2000", fam[0]["mutations"], fam[0]["mutations"] >= 2_000))
        other = sum(f["outcomes"]["other"] + f["outcomes"]["multiline"] for f in fam)
        slow = sum(f["cpu_over_1s"] for f in fam)
        memory = sum(f["outcomes"]["memory"] for f in fam)
        targets += [
            target(f"{label} exceptions other than the project's UserError/CorruptFileError (or multi-line)", "0", other, other == 0),
            target(f"{label} loads over 1 s (CPU time of the loading thread)", "0", slow, slow == 0),
            target(f"{label} loads over 500 MB (allocation refused by RLIMIT_DATA = start + 500 MiB)", "0", memory, memory == 0),
        ]
    targets.append(target("nnc raw mutations (old CRC kept) that load: the checksum catches every one", "0",
                          nr["outcomes"]["loaded"], nr["outcomes"]["loaded"] == 0))
    unmutated = [c for c in cli if not c["mutated"]]
    targets += [
        target("CLI runs on unmutated files exiting 0 (the happy path still works)", f"{len(unmutated)} of {len(unmutated)}",
               sum(c["rc"] == 0 for c in unmutated), all(c["rc"] == 0 for c in unmutated)),
        target("CLI runs on mutated files", ">= 300", sum(c["mutated"] for c in cli), sum(c["mutated"] for c in cli) >= 300),
        target("CLI runs exiting other than 0 or 2, with a traceback or leaving a half-written file", "0", len(bad_cli), not bad_cli),
    ]
    result = {
        "benchmark": "fuzz",
        "targets": targets,
        "all_met": all(t["met"] for t in targets),
        "seed": SEED,
        "seeds": {"per case": f"np.random.default_rng([{SEED}, family index, case index]); CLI: default_rng([{SEED}, 99])",
                  "models": "torch.manual_seed(0) lenet300, (1) lenet5"},
        "counts": {k: v["mutations"] for k, v in families.items()} | {"cli": len(cli)},
        "families": families,
        "cli": {"runs": len(cli), "exit_codes": dict(rcs), "by_command": cli_by_kind, "bad": bad_cli[:20],
                "max_seconds": max(c["seconds"] for c in cli), "commands": {
                    "decompress": "nncompress decompress X.nnc --out Y.safetensors",
                    "evaluate": "nncompress evaluate --nnc X.nnc --data data28.npz --json",
                    "analyze": "nncompress analyze --model lenet300 --data bad.npz --json --out Y.json",
                    "check_recipe": "nncompress run-recipe bad.yaml --check"}},
        "memory_method": ("each in-process worker sets RLIMIT_DATA to its data size after start-up + 500 MiB, so an allocation "
                          "taking a load past 500 MB fails (numpy and torch, touched or not) and is counted; peak RSS growth "
                          "(ru_maxrss) over start-up is reported beside it"),
        "max_rss_growth_bytes": rss_growth,
        "memory_canary": reports[0]["canary"],
        "time_method": "time.thread_time() around each load (the machine is shared; wall-clock maxima reported per family)",
        "workers": 2,
        "seconds": {"in_process": round(in_process_s, 1), "cli": round(cli_s, 1), "total": round(time.perf_counter() - start, 1)},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "environment": environment(1),
    }
    path = write_results("fuzz", result)
    for t in targets:
        print(f"{'met ' if t['met'] else 'MISS'}  {t['name']}: {t['measured']} (target {t['target']})")
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=3)
    args = parser.parse_args()
    if args.worker:
        w, n, folder = int(args.worker[0]), int(args.worker[1]), Path(args.worker[2])
        worker(w, n, folder, folder / f"worker{w}.json")
    else:
        main()
