"""Reports: hand-checked sizes, a self-contained HTML/Markdown file, the CLI, and a headless-Chromium render."""
import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from nncompress.cli import app
from nncompress.core.errors import UserError
from nncompress.report import build_report, pareto_front, report_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_pareto_front_by_hand():
    # (bytes, top1): b dominates c (smaller and more accurate); a, b, d trade size for accuracy
    pts = [(100.0, 99.0), (20.0, 98.0), (30.0, 97.0), (5.0, 90.0), (20.0, 98.0)]
    assert pareto_front(pts) == [3, 1, 4, 0]


def _pair():
    torch.manual_seed(0)
    before = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    after = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    after.load_state_dict(before.state_dict())
    with torch.no_grad():
        after[1].weight.view(-1)[:6] = 0
    return before, after


def test_sizes_and_layer_table_by_hand():
    before, after = _pair()
    rep = build_report(before, after, (4,), 90.0, 89.0, value_bits=8)
    assert rep.stages[0] == {"stage": "before: dense fp32", "bytes": (12 + 3) * 4, "ratio": 1.0, "top1": 90.0}
    assert rep.stages[1]["bytes"] == 60  # zeros still cost 4 bytes each when stored dense
    assert all(s["ratio"] == pytest.approx(60 / s["bytes"]) for s in rep.stages)
    assert rep.stages[-1]["stage"] == "after: sparse (CSR) 8-bit values" and rep.stages[-1]["bytes"] < rep.stages[2]["bytes"]
    assert rep.layers == [{"name": "1", "shape": "3×4", "params": 15, "nnz_before": 15, "nnz_after": 9, "sparsity_after": 0.5,
                           "bytes_after": 24, "energy_after_pj": pytest.approx(3895.2)}]
    # energy (Horowitz 45 nm): 12 fp32 MACs · 4.6 pJ = 55.2 pJ, plus the stored bytes read from DRAM at 640 pJ/word:
    # before 15 fp32 values = 15 words; after 12 int8 weights (dense 12 B < CSR 6 + 10 index B) + 12 B bias = 6 words
    key = "energy estimate (45 nm, fp32 MACs, weights from DRAM)"
    assert rep.summary[key] == f"{(55.2 + 15 * 640) / 1e6:,.3f} µJ → {(55.2 + 6 * 640) / 1e6:,.3f} µJ"
    assert "energy after (nJ, est.)" in rep.to_markdown() and "energy after (nJ, est.)" in rep.to_html()


def test_sparse_layer_energy_counts_nonzero_macs():
    torch.manual_seed(0)
    before = nn.Sequential(nn.Linear(100, 10, bias=False))
    after = nn.Sequential(nn.Linear(100, 10, bias=False))
    with torch.no_grad():
        after[0].weight[:, 10:] = 0  # 100 non-zeros of 1,000
    rep = build_report(before, after, (100,), 90.0, 89.0)
    # CSR fp32: 100·4 + (100 + 10 + 1)·1 = 511 B < dense 4,000 B → 128 words · 640 pJ + 100 MACs · 4.6 pJ
    assert rep.layers[0]["bytes_after"] == 511
    assert rep.layers[0]["energy_after_pj"] == pytest.approx(128 * 640 + 460)


def test_html_and_markdown_are_self_contained(tmp_path):
    before, after = _pair()
    rep = build_report(before, after, (4,), 90.0, 89.0, history=[{"epoch": 0, "top1": 80.0, "sparsity": 0.5}],
                       sensitivity={"levels": [0.0, 0.5], "metrics": {"1": [90.0, 70.0]}, "baseline": 90.0})
    html_path, md_path = rep.write(tmp_path / "r.html", tmp_path / "r.md")
    text, md = html_path.read_text(), md_path.read_text()
    assert not re.search(r"(src|href)=['\"](?!data:)", text)  # nothing fetched from elsewhere
    images = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(images) == 4 and all(base64.b64decode(i).startswith(PNG) for i in images)
    assert len(re.findall(r"\]\(data:image/png;base64,", md)) == 4
    for needle in ("Stages (ratio = original / compressed bytes)", "Weight histograms", "Pruning sensitivity", "onnxruntime",
                   "torch_threads"):
        assert needle in text and needle in md


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from nncompress.recipes.runner import run_recipe

    torch.set_num_threads(1)
    d = yaml.safe_load((Path(__file__).parents[2] / "recipes/level.yaml").read_text())
    d.update(data={"name": "digits", "train_samples": 200, "test_samples": 100}, pretrain={"epochs": 1}, training={"epochs": 1, "lr": 0.01})
    out = tmp_path_factory.mktemp("run")
    run_recipe(d, out, progress=False)
    return out


def test_run_writes_report_and_cli_rebuilds_it(run_dir, tmp_path):
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    res = CliRunner().invoke(app, ["report", str(run_dir), "--html", str(tmp_path / "x.html"), "--markdown", str(tmp_path / "x.md"), "--json"])
    assert res.exit_code == 0, res.output
    stages = yaml.safe_load(res.output)["stages"]
    assert stages[0]["bytes"] == 4 * (64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10)  # LeNet-300-100 on 8×8, fp32
    assert "Layers" in (tmp_path / "x.html").read_text()
    with pytest.raises(UserError, match="not a recipe run directory"):
        report_run(tmp_path)


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1000,1400",
                    (run_dir / "report.html").resolve().as_uri()], check=True, capture_output=True, timeout=60)
    import numpy as np
    from matplotlib.image import imread

    img = imread(shot)
    assert img.shape[0] == 1400 and img.shape[1] == 1000
    assert float(np.asarray(img)[..., :3].std()) > 0.05  # text, tables and plots, not a blank page


def test_value_bits_of_a_run_follow_its_quantization_policy():
    from nncompress.report.run import value_bits

    assert value_bits({"policies": [{"method": "ptq", "weight_bits": 4}]}) == 4
    assert value_bits({"policies": [{"method": "qat", "weight_bits": 8}]}) == 8
    assert value_bits({"policies": [{"method": "share", "bits": {"conv": 8, "linear": 5}}]}) == 8
    assert value_bits({"policies": [{"method": "agp"}]}) == 32
