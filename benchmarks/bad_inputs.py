"""Hostile files and bad input against the installed `nncompress` console script: zero crashes.

Every invocation here is wrong on purpose: an unknown command or option, a value that does not parse or is
out of range, an unknown model/dataset/layer/method name, a missing, truncated or garbage file (.nnc, .npz,
safetensors, pickle, YAML recipe), weights for another architecture, or an output path that cannot be
written (read-only folder, a file where a folder is expected and the reverse, a file as a parent folder).
The contract checked for each one: exit code 2, exactly one stderr line starting with `error:`, no Python
traceback, and nothing left behind in the output folder. The table is generated (each command × each kind
of bad value, plus the bad files), each case runs as its own subprocess with a timeout, two at a time (the
machine has two cores and is shared).

Run: .venv/bin/python benchmarks/bad_inputs.py  → benchmarks/results/bad_inputs.json
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bad_inputs.json"
SCRIPT = Path(sys.executable).parent / "nncompress"
TIMEOUT_S = 90  # every case should fail in seconds; a case that trains instead is a failure, cut off here
WORKERS = 2

# ------------------------------------------------------------------------------------------- the table
# Per command: the arguments that make an otherwise valid call cheap (tiny data, 1 epoch), used as the base
# every bad value is added to, so a value that is wrongly accepted costs seconds, not minutes.
FAST = {
    "train": ["--data", "digits", "--epochs", "1", "--out", "{work}/m.safetensors"],
    "evaluate": ["--data", "digits", "--weights", "{inp}/lenet300.safetensors"],
    "compress": ["--data", "digits", "--train-epochs", "1", "--finetune-epochs", "0", "--prune-steps", "1", "--out", "{work}/c"],
    "decompress": ["{inp}/good.nnc", "--out", "{work}/d.safetensors"],
    "analyze": ["--model", "lenet300", "--data", "digits"],
    "sensitivity": ["--data", "digits", "--train-epochs", "1", "--levels", "0,0.5", "--out", "{work}/s"],
    "prune": ["--data", "digits", "--train-epochs", "1", "--out", "{work}/p.safetensors"],
    "quantize": ["--model", "lenet300", "--data", "digits", "--subset", "200", "--train-epochs", "1", "--calib-batches", "1",
                 "--repeats", "1", "--mode", "dynamic"],
    "mixed-precision": ["--budget-bytes", "20000", "--model", "lenet300", "--data", "digits", "--subset", "200",
                        "--train-epochs", "1", "--calib-batches", "1"],
    "accumulators": ["--model", "lenet5"],
    "distill": ["--teacher", "lenet300", "--student", "lenet300", "--data", "digits", "--epochs", "1", "--teacher-epochs", "1"],
    "factorize": ["--model", "lenet300", "--data", "digits", "--energy", "0.9", "--pretrain-epochs", "1", "--finetune-epochs", "0"],
    "search": ["--data", "digits", "--trials", "1", "--epochs", "1", "--n-train", "100", "--strategy", "random"],
    "early-exit": ["--model", "mobilenet_v1", "--data", "digits", "--epochs", "1", "--n-train", "100"],
    "prune-channels": ["--model", "lenet5", "--data", "digits", "--pretrain-epochs", "1", "--finetune-epochs", "0"],
    "netadapt": ["--latency-budget", "0.9", "--model", "lenet5", "--data", "digits", "--pretrain-epochs", "1",
                 "--short-steps", "1", "--long-epochs", "0"],
    "run-recipe": ["{inp}/tiny.yaml", "--out", "{work}/run"],
    "export": ["--model", "lenet300", "--data", "digits", "--out", "{work}/m.onnx"],
    "report": ["{inp}"],
    "zoo summary": ["lenet5", "--input", "1x28x28", "--classes", "10"],
}

# (command, option, bad values): values that do not parse or fall outside the option's range.
BAD_VALUES = [
    ("train", "--epochs", ["0", "abc", "1.5"]),
    ("train", "--lr", ["0", "nan", "inf"]),
    ("train", "--seed", ["-1"]),
    ("train", "--threads", ["0"]),
    ("compress", "--sparsity", ["1.5", "nan", "fc1=abc", "=0.5", "fc9=0.5"]),
    ("compress", "--bits", ["0", "fc1=99"]),
    ("compress", "--prune-steps", ["0"]),
    ("prune", "--sparsity", ["1.0", "-0.1", "abc"]),
    ("prune", "--fine-tune-epochs", ["-1"]),
    ("sensitivity", "--levels", ["0,1.5", ","]),
    ("sensitivity", "--max-drop", ["nan"]),
    ("quantize", "--bits", ["0", "17"]),
    ("quantize", "--batch-size", ["0"]),
    ("quantize", "--subset", ["1"]),
    ("mixed-precision", "--budget-bytes", ["0", "abc"]),
    ("mixed-precision", "--bits-options", ["2,40", "a,b"]),
    ("accumulators", "--acc-bits", ["65"]),
    ("accumulators", "--in-shape", ["a,b", "0,1,1"]),
    ("analyze", "--bits", ["0"]),
    ("distill", "--alpha", ["1.5"]),
    ("distill", "--temperature", ["0"]),
    ("distill", "--lr", ["inf"]),
    ("factorize", "--energy", ["0", "1.5"]),
    ("search", "--trials", ["0"]),
    ("search", "--target-ms", ["nan"]),
    ("early-exit", "--width", ["0"]),
    ("early-exit", "--exits", ["a,b"]),
    ("prune-channels", "--ratio", ["1.0"]),
    ("prune-channels", "--round-to", ["0"]),
    ("prune-channels", "--layer-ratio", ["conv1=2", "noequals"]),
    ("netadapt", "--latency-budget", ["0", "1.5"]),
    ("netadapt", "--step", ["0"]),
    ("zoo summary", "--input", ["0x1x1", "abc"]),
    ("zoo summary", "--classes", ["0"]),
    ("export", "--threads", ["0"]),
    ("run-recipe", "--device", ["tpu"]),
]

# (command, option, value): names that are not models / datasets / layers / methods.
BAD_NAMES = [
    *[(cmd, "--model", "nosuchnet") for cmd in ("train", "compress", "quantize", "analyze", "prune-channels", "export")],
    *[(cmd, "--data", "imagenet") for cmd in ("train", "prune", "search", "distill")],
    ("distill", "--student", "nosuchnet"), ("distill", "--teacher", "nosuchnet"),
    ("prune", "--layers", "fc9"), ("sensitivity", "--layers", "fc9"),
    ("prune", "--criterion", "biggest"), ("prune", "--scope", "everywhere"),
    ("quantize", "--mode", "float8"), ("quantize", "--calibration", "magic"), ("quantize", "--backend", "tpu"),
    ("factorize", "--method", "qr"), ("search", "--strategy", "annealing"), ("prune-channels", "--criterion", "l3"),
    ("train", "--device", "tpu"), ("zoo summary", None, "resnet9000"),
]

# (command, option, file placeholder): missing, garbage, truncated, wrong-architecture input files.
BAD_FILES = [
    ("decompress", None, "{inp}/missing.nnc"), ("decompress", None, "{inp}/garbage.nnc"),
    ("decompress", None, "{inp}/empty.nnc"), ("decompress", None, "{inp}/truncated-header.nnc"),
    ("decompress", None, "{inp}/truncated-half.nnc"), ("decompress", None, "{inp}/truncated-last-byte.nnc"),
    ("decompress", None, "{inp}/bitflip.nnc"), ("decompress", None, "{inp}/bad-magic.nnc"), ("decompress", None, "{inp}"),
    ("evaluate", "--nnc", "{inp}/truncated-half.nnc"),
    *[("evaluate", "--weights", f"{{inp}}/{name}") for name in (
        "missing.safetensors", "garbage.safetensors", "lenet5.safetensors", "pickle.pt", "empty.safetensors",
        "truncated.safetensors")],
    ("compress", "--weights", "{inp}/lenet5.safetensors"), ("prune", "--weights", "{inp}/garbage.safetensors"),
    ("analyze", "--weights", "{inp}/lenet5.safetensors"), ("quantize", "--weights", "{inp}/lenet5.safetensors"),
    ("factorize", "--weights", "{inp}/garbage.safetensors"), ("export", "--weights", "{inp}/lenet5.safetensors"),
    ("prune-channels", "--weights", "{inp}/missing.safetensors"),
    ("distill", "--teacher-weights", "{inp}/garbage.safetensors"),
    *[("train", "--data", f"{{inp}}/{name}")
      for name in ("garbage.npz", "missing.npz", "keys.npz", "nan.npz", "one-sample.npz", "labels-float.npz", "x-1d.npz")],
    ("compress", "--data", "{inp}/garbage.npz"), ("quantize", "--data", "{inp}/nan.npz"),
    ("compress", "--recipe", "{inp}/missing.yaml"),
    *[("run-recipe", None, f"{{inp}}/{name}") for name in (
        "syntax.yaml", "unknown-field.yaml", "wrong-type.yaml", "empty.yaml", "list.yaml", "negative-epochs.yaml",
        "unknown-method.yaml", "sparsity-1.5.yaml", "unknown-model.yaml", "bad-device.yaml", "binary.yaml", "missing.yaml")],
    ("report", None, "{inp}/missing-run"),
]

# (command, option, path): outputs that cannot be written where they are asked for: a read-only folder, a
# file where a folder is expected (and the reverse), a file as a parent folder.
_RO, _FILE, _DIR, _UNDER_FILE = "{ro}/out", "{inp}/a-file.txt", "{inp}", "{inp}/a-file.txt/out"
BAD_OUTS = [
    ("compress", "--out", _RO), ("compress", "--out", _FILE), ("compress", "--out", _UNDER_FILE),
    ("sensitivity", "--out", _FILE), ("run-recipe", "--out", _RO), ("run-recipe", "--out", _FILE),
    ("search", "--out", _FILE),
    ("train", "--out", _RO), ("train", "--out", _DIR), ("train", "--out", _UNDER_FILE),
    ("prune", "--out", _RO), ("decompress", "--out", _DIR), ("analyze", "--out", _UNDER_FILE),
    ("quantize", "--output", _RO), ("export", "--out", _DIR), ("zoo summary", "--out", _RO),
    ("factorize", "--out", _UNDER_FILE), ("distill", "--out", _DIR), ("prune-channels", "--out", _RO),
    ("early-exit", "--save", _DIR),
]

REQUIRED_MISSING = [["decompress"], ["run-recipe"], ["report"], ["zoo", "summary"], ["mixed-precision"], ["netadapt"],
                    ["distill", "--student", "lenet300"], ["factorize"], ["analyze"], ["sensitivity"], ["prune"]]
UNKNOWN_COMMANDS = [["nosuchcmd"], ["Compress"], ["zoo", "nope"], ["--bogus"]]
OPTION_WITHOUT_VALUE = [["compress", "--out"], ["train", "--epochs"], ["prune", "--sparsity"]]


def _command_argv(command: str) -> list[str]:
    return command.split(" ")


def build_cases(has_cuda: bool) -> list[dict]:
    """The generated table: one dict per invocation with its kind, command and argv (placeholders unresolved)."""
    cases = []

    def add(kind: str, command: str, argv: list[str]) -> None:
        cases.append({"kind": kind, "command": command, "argv": argv})

    for argv in UNKNOWN_COMMANDS:
        add("unknown command", argv[0], argv)
    for command in FAST:  # an unknown option for every command
        add("unknown option", command, [*_command_argv(command), "--bogus"])
    for argv in REQUIRED_MISSING:
        add("missing required", " ".join(a for a in argv[:2] if not a.startswith("-")), argv)
    for argv in OPTION_WITHOUT_VALUE:
        add("option without value", argv[0], argv)
    for command, option, values in BAD_VALUES:
        for value in values:
            add("bad value", command, [*_command_argv(command), *_without(FAST[command], option), option, value])
    for command, option, value in BAD_NAMES:
        base = [a for a in FAST[command] if a != "lenet5"] if option is None else _without(FAST[command], option)
        add("unknown name", command, [*_command_argv(command), *base, *([option] if option else []), value])
    for command, option, path in BAD_FILES:
        if option is None:  # the positional input replaces the base one
            base = [a for a in FAST[command] if not a.startswith("{inp}")]
            add("bad file", command, [*_command_argv(command), path, *base])
        else:
            base = _without(FAST[command], option)
            add("bad file", command, [*_command_argv(command), *base, option, path])
    for command, option, path in BAD_OUTS:
        add("bad output path", command, [*_command_argv(command), *_without(FAST[command], option), option, path])
    if not has_cuda:
        add("cuda without cuda", "run-recipe", ["run-recipe", "{inp}/cuda.yaml", "--out", "{work}/run"])
        add("cuda without cuda", "compress", ["compress", "--recipe", "{inp}/cuda.yaml", "--out", "{work}/c"])
        add("cuda without cuda", "train", ["train", *FAST["train"], "--device", "cuda"])
    return cases


def _without(argv: list[str], option: str) -> list[str]:
    """`argv` minus `option` and its value (so the case's own value is the only one)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        out.append(a)
    return out


# ------------------------------------------------------------------------------------------- the files
RECIPE_OK = "name: tiny\nmodel: lenet300\ndata: digits\ntraining: {epochs: 1, lr: 0.01}\n"
RECIPES = {
    "tiny.yaml": RECIPE_OK,
    "cuda.yaml": RECIPE_OK + "device: cuda\n",
    "syntax.yaml": "model: lenet300\ntraining: {epochs: [1\n",
    "unknown-field.yaml": RECIPE_OK + "learning_rate: 0.1\n",
    "wrong-type.yaml": "model: lenet300\ndata: digits\ntraining: {epochs: many}\n",
    "empty.yaml": "",
    "list.yaml": "- model: lenet300\n- training: {epochs: 1}\n",
    "negative-epochs.yaml": "model: lenet300\ndata: digits\ntraining: {epochs: -2}\n",
    "unknown-method.yaml": RECIPE_OK + "policies:\n  - method: magic\n    start: 0\n",
    "sparsity-1.5.yaml": RECIPE_OK + "policies:\n  - method: level\n    sparsity: 1.5\n    start: 0\n",
    "unknown-model.yaml": RECIPE_OK.replace("lenet300", "nosuchnet"),
    "bad-device.yaml": RECIPE_OK + "device: gpu0\n",
}


def make_inputs(inp: Path) -> None:
    """Write every hostile input: garbage and truncated .nnc, bad .npz, foreign safetensors, bad YAML."""
    import numpy as np
    import torch

    from nncompress.architectures import build_model
    from nncompress.core.io import save_weights
    from nncompress.encoding import save_nnc
    from nncompress.export import compress_model
    from nncompress.sharing import share_weights

    torch.manual_seed(0)
    (inp / "a-file.txt").write_text("a file, not a folder\n")
    net = build_model("lenet300", (1, 8, 8), 10)  # digits: 8×8 images, 10 classes
    save_weights(net.state_dict(), inp / "lenet300.safetensors")
    save_weights(build_model("lenet5", (1, 8, 8), 10).state_dict(), inp / "lenet5.safetensors")  # wrong architecture
    good_weights = (inp / "lenet300.safetensors").read_bytes()
    (inp / "truncated.safetensors").write_bytes(good_weights[: len(good_weights) // 2])
    (inp / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + os.urandom(256))
    (inp / "empty.safetensors").write_bytes(b"")
    torch.save({"fc1.weight": torch.zeros(2), "evil": print}, inp / "pickle.pt")  # weights_only must refuse it

    share_weights(net, bits=4, max_iter=5)
    save_nnc(inp / "good.nnc", compress_model(net, {"model": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10}))
    nnc = (inp / "good.nnc").read_bytes()
    (inp / "garbage.nnc").write_bytes(os.urandom(512))
    (inp / "empty.nnc").write_bytes(b"")
    (inp / "truncated-header.nnc").write_bytes(nnc[:10])
    (inp / "truncated-half.nnc").write_bytes(nnc[: len(nnc) // 2])
    (inp / "truncated-last-byte.nnc").write_bytes(nnc[:-1])
    flipped = bytearray(nnc)
    flipped[len(flipped) // 2] ^= 0x40
    (inp / "bitflip.nnc").write_bytes(bytes(flipped))
    (inp / "bad-magic.nnc").write_bytes(b"XXXX" + nnc[4:])

    rng = np.random.default_rng(0)
    x, y = rng.random((50, 8, 8), dtype=np.float32), rng.integers(0, 10, 50)
    (inp / "garbage.npz").write_bytes(b"PK\x03\x04" + os.urandom(300))
    np.savez(inp / "keys.npz", images=x, labels=y)
    x_nan = x.copy()
    x_nan[3, 2, 2] = np.nan
    np.savez(inp / "nan.npz", x=x_nan, y=y)
    np.savez(inp / "one-sample.npz", x=x[:1], y=y[:1])
    np.savez(inp / "labels-float.npz", x=x, y=y.astype(np.float32) + 0.5)
    np.savez(inp / "x-1d.npz", x=np.arange(50, dtype=np.float32), y=y)

    for name, text in RECIPES.items():
        (inp / name).write_text(text)
    (inp / "binary.yaml").write_bytes(b"\x00\xff\xfe" + os.urandom(64))


def _writable(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def make_read_only(folder: Path) -> str:
    """chmod 555, and as root (which ignores permission bits) `chattr +i`; returns how it was made read-only."""
    folder.chmod(0o555)
    if _writable(folder) and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        return "chattr +i" if not _writable(folder) else "not read-only (root without chattr)"
    return "chmod 555" if not _writable(folder) else "not read-only"


def release(folder: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(0o755)


# ------------------------------------------------------------------------------------------- running
def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()) if root.is_dir() else []


def run_case(i: int, case: dict, base: Path, inp: Path, ro: Path, env: dict) -> dict:
    work = base / f"work-{i:03d}"
    work.mkdir()
    argv = [a.format(inp=inp, ro=ro, work=work) for a in case["argv"]]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([str(SCRIPT), *argv], cwd=work, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - t0
    lines = [line for line in err.splitlines() if line.strip()]
    left = _files(work) + [f"{{ro}}/{f}" for f in _files(ro)]
    shown = [a.replace(str(work), "{work}").replace(str(inp), "{inp}").replace(str(ro), "{ro}") for a in argv]
    ok = (rc == 2 and len(lines) == 1 and err.count("\n") == 1 and lines[0].startswith("error: ")
          and "Traceback" not in err + out and not left)
    first = (lines[0] if lines else "").replace(str(work), "{work}").replace(str(inp), "{inp}").replace(str(ro), "{ro}")
    return {"kind": case["kind"], "command": case["command"], "argv": shown, "rc": rc,
            "stderr_first_line": first[:400], "stderr_lines": len(lines),
            "traceback": "Traceback" in err + out, "files_left": left, "seconds": round(seconds, 2), "ok": ok}


def main() -> None:
    import torch
    import typer

    t_start = time.perf_counter()
    has_cuda = torch.cuda.is_available()
    cases = build_cases(has_cuda)
    base = Path(tempfile.mkdtemp(prefix="nncompress-bad-inputs-"))
    inp, ro = base / "inputs", base / "read-only"
    inp.mkdir()
    ro.mkdir()
    make_inputs(inp)
    ro_how = make_read_only(ro)
    env = {**os.environ, "NNCOMPRESS_CACHE": str(base / "cache"), "PYTHONWARNINGS": "ignore"}
    env.pop("NNCOMPRESS_DEBUG", None)
    inputs_before = {p: p.stat().st_mtime_ns for p in inp.rglob("*")}
    print(f"{len(cases)} bad invocations, {WORKERS} at a time, timeout {TIMEOUT_S} s each", flush=True)
    try:
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            rows = list(pool.map(lambda ic: run_case(ic[0], ic[1], base, inp, ro, env), enumerate(cases)))
    finally:
        release(ro)
    inputs_changed = {p: p.stat().st_mtime_ns for p in inp.rglob("*")} != inputs_before
    shutil.rmtree(base, ignore_errors=True)

    n = len(rows)
    exit2 = sum(r["rc"] == 2 for r in rows)
    one_line = sum(r["stderr_lines"] == 1 and r["stderr_first_line"].startswith("error: ") for r in rows)
    tracebacks = sum(r["traceback"] for r in rows)
    half_written = sum(bool(r["files_left"]) for r in rows) + int(inputs_changed)
    targets = [
        {"name": "distinct bad invocations", "target": ">= 100", "measured": n, "met": n >= 100},
        {"name": "invocations that exit 2", "target": f"{n} of {n}", "measured": exit2, "met": exit2 == n},
        {"name": "invocations printing exactly one 'error:' line", "target": f"{n} of {n}", "measured": one_line, "met": one_line == n},
        {"name": "tracebacks", "target": 0, "measured": tracebacks, "met": tracebacks == 0},
        {"name": "runs leaving a file behind (half-written or otherwise)", "target": 0, "measured": half_written,
         "met": half_written == 0},
    ]
    by_kind: dict[str, dict] = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"cases": 0, "ok": 0})
        k["cases"] += 1
        k["ok"] += r["ok"]
    result = {
        "benchmark": "bad_inputs",
        "what": "bad CLI invocations against the installed console script: exit 2, one 'error:' line, no traceback, no files left",
        "targets": targets,
        "summary": {"cases": n, "ok": sum(r["ok"] for r in rows), "by_kind": by_kind,
                    "median_seconds": sorted(r["seconds"] for r in rows)[n // 2],
                    "max_seconds": max(r["seconds"] for r in rows), "read_only_folder": ro_how,
                    "inputs_modified": inputs_changed},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "typer": getattr(typer, "__version__", "?"), "cuda": has_cuda, "cpus": os.cpu_count(),
                        "platform": platform.platform(), "workers": WORKERS, "timeout_s": TIMEOUT_S},
        "failures": [r for r in rows if not r["ok"]],
        "results": rows,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, RESULTS)
    for t in targets:
        print(f"{'MET ' if t['met'] else 'MISS'} {t['name']}: {t['measured']} (target {t['target']})")
    for r in result["failures"]:
        print(f"FAIL rc={r['rc']} lines={r['stderr_lines']} left={r['files_left']} {' '.join(r['argv'])}\n     {r['stderr_first_line'][:200]}")
    print(f"wrote {RESULTS} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
