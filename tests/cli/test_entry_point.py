"""The installed `nncompress` console script on bad input: one `error:` line, exit 2, no traceback, no files.

These run the real entry point in subprocesses (not typer's CliRunner), because the failure this guards
against lived exactly there: `main()` imported `click`, which typer 0.29 no longer installs, so every usage
error ended in a ModuleNotFoundError traceback that in-process tests never saw. Every case must fail before
any training starts, so the whole table runs in about a minute on two cores.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "nncompress"
TIMEOUT_S = 120

RECIPE = """name: t
model: lenet300
data: digits
device: {device}
training: {{epochs: 1, lr: 0.01}}
"""


def _writable(folder: Path) -> bool:
    try:
        fd, probe = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _make_read_only(folder: Path) -> bool:
    """chmod 555; as root (which ignores permission bits) also `chattr +i`. True when writes really fail."""
    folder.chmod(0o555)
    if not _writable(folder) or not shutil.which("chattr"):
        return not _writable(folder)
    subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    return not _writable(folder)


def _release(folder: Path) -> None:
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    folder.chmod(0o755)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# (id, argv with {inp} for the inputs folder and {ro} for a read-only folder, needs)
CASES = [
    ("unknown-command", ["nosuchcmd"], None),
    ("unknown-subcommand", ["zoo", "nope"], None),
    ("unknown-option", ["compress", "--bogus"], None),
    ("missing-argument", ["decompress"], None),
    ("missing-option-value", ["compress", "--out"], None),
    ("non-numeric-sparsity", ["prune", "--sparsity", "abc", "--out", "p.safetensors"], None),
    ("non-integer-epochs", ["train", "--epochs", "1.5", "--out", "m.safetensors"], None),
    ("epochs-zero", ["train", "--epochs", "0", "--out", "m.safetensors"], None),
    ("sparsity-one", ["prune", "--sparsity", "1.0", "--out", "p.safetensors"], None),
    ("sparsity-nan-compress", ["compress", "--sparsity", "nan", "--out", "c"], None),
    ("bits-17", ["quantize", "--bits", "17", "--output", "q.safetensors"], None),
    ("lr-negative", ["train", "--lr", "-0.1", "--out", "m.safetensors"], None),
    ("lr-inf", ["distill", "--teacher", "lenet5", "--student", "lenet300", "--lr", "inf"], None),
    ("seed-negative", ["train", "--seed", "-1", "--out", "m.safetensors"], None),
    ("batch-size-zero", ["quantize", "--batch-size", "0"], None),
    ("unknown-model", ["train", "--model", "nosuchnet", "--out", "m.safetensors"], None),
    ("unknown-dataset", ["compress", "--data", "imagenet", "--out", "c"], None),
    ("unknown-layer", ["prune", "--layers", "fc9", "--data", "digits", "--out", "p.safetensors"], None),
    ("missing-weights", ["evaluate", "--weights", "{inp}/nope.safetensors"], None),
    ("missing-nnc", ["decompress", "{inp}/nope.nnc", "--out", "d.safetensors"], None),
    ("garbage-nnc", ["decompress", "{inp}/garbage.nnc", "--out", "d.safetensors"], None),
    ("garbage-weights", ["evaluate", "--weights", "{inp}/garbage.safetensors", "--data", "digits"], None),
    ("garbage-npz", ["compress", "--data", "{inp}/garbage.npz", "--out", "c"], None),
    ("bad-yaml-recipe", ["run-recipe", "{inp}/bad.yaml", "--out", "run"], None),
    ("out-dir-is-a-file", ["compress", "--out", "{inp}/a-file.txt"], None),
    ("out-file-is-a-folder", ["train", "--out", "{inp}"], None),
    ("out-parent-is-a-file", ["train", "--out", "{inp}/a-file.txt/m.safetensors"], None),
    ("out-dir-read-only", ["compress", "--out", "{ro}/c"], "ro"),
    ("out-file-in-read-only", ["prune", "--out", "{ro}/p.safetensors"], "ro"),
    ("recipe-device-cuda-without-cuda", ["run-recipe", "{inp}/cuda.yaml", "--out", "run"], "no-cuda"),
    ("device-cuda-without-cuda", ["train", "--device", "cuda", "--out", "m.safetensors"], "no-cuda"),
]


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Run every case once (two at a time: the machine has two cores), each in its own empty working folder."""
    base = tmp_path_factory.mktemp("entry")
    inp = base / "inputs"
    inp.mkdir()
    (inp / "garbage.nnc").write_bytes(b"NNC\x00" + os.urandom(200))
    (inp / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + os.urandom(64))
    (inp / "garbage.npz").write_bytes(b"PK\x03\x04" + os.urandom(300))
    (inp / "bad.yaml").write_text("model: lenet300\ntraining: {epochs: [1\n")
    (inp / "cuda.yaml").write_text(RECIPE.format(device="cuda"))
    (inp / "a-file.txt").write_text("not a folder\n")
    ro = base / "read-only"
    ro.mkdir()
    ro_ok = _make_read_only(ro)
    inputs_before = _snapshot(inp)
    env = {**os.environ, "NNCOMPRESS_CACHE": str(base / "cache"), "PYTHONWARNINGS": "ignore"}
    env.pop("NNCOMPRESS_DEBUG", None)

    def run(case):
        name, argv, _ = case
        cwd = base / f"work-{name}"
        cwd.mkdir()
        args = [a.format(inp=inp, ro=ro) for a in argv]
        proc = subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
        return name, (proc, sorted(_snapshot(cwd)))

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            out = dict(pool.map(run, CASES))
    finally:
        _release(ro)
    out["_ro_ok"], out["_ro_left"] = ro_ok, sorted(_snapshot(ro))
    out["_inputs_changed"] = _snapshot(inp) != inputs_before
    return out


@pytest.mark.parametrize(("name", "argv", "needs"), CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_error_line_exit_2_and_leaves_nothing(results, name, argv, needs):
    if needs == "ro" and not results["_ro_ok"]:
        pytest.skip("cannot make a read-only folder here (root without chattr)")
    if needs == "no-cuda" and _cuda_available():
        pytest.skip("this machine has CUDA")
    proc, left = results[name]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # exactly one line, not one line plus blank ones
    assert left == [], f"left behind in the working folder: {left}"
    if needs == "ro":
        assert results["_ro_left"] == []
    assert not results["_inputs_changed"]


def test_usage_errors_name_the_command_and_where_to_look(results):
    """The message says what, where and how to fix: the option, the command and its --help."""
    assert results["unknown-option"][0].stderr.strip() == \
        "error: no such option --bogus for 'compress' (did you mean --bits or --out?) (see 'nncompress compress --help')"
    assert results["unknown-command"][0].stderr.strip() == "error: no such command 'nosuchcmd' (see 'nncompress --help')"
    bad = results["non-numeric-sparsity"][0].stderr
    assert "'abc'" in bad and "--sparsity" in bad and "'prune'" in bad and "nncompress prune --help" in bad


def test_help_exits_0_with_usage_on_stdout(tmp_path):
    for argv in (["--help"], ["compress", "--help"], ["zoo", "summary", "--help"]):
        proc = subprocess.run([str(SCRIPT), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "Usage" in proc.stdout and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_debug_env_gives_the_traceback(tmp_path):
    """NNCOMPRESS_DEBUG=1 is the one way to see a traceback, for reporting a bug."""
    env = {**os.environ, "NNCOMPRESS_DEBUG": "1"}
    proc = subprocess.run([str(SCRIPT), "decompress", str(tmp_path / "missing.nnc")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
