import json

import pytest
import torch
from rich.console import Console

from nncompress.analysis import analyze, sparsity_bar_plot, weight_histogram
from nncompress.architectures import build_model
from nncompress.core.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_dense_sizes_match_deep_compression_table():
    # Han et al. 2016, Table 2/3: LeNet-300-100 1070 KB and LeNet-5 1720 KB as 32-bit floats
    lenet300 = analyze(build_model("lenet300"), (1, 28, 28)).totals
    lenet5 = analyze(build_model("lenet5"), (1, 28, 28)).totals
    assert lenet300["dense_bytes"] == 266_610 * 4
    assert lenet300["dense_bytes"] / 1000 == pytest.approx(1070, rel=0.01)
    assert lenet5["dense_bytes"] / 1000 == pytest.approx(1720, rel=0.01)
    assert (lenet300["macs"], lenet5["macs"]) == (266_200, 2_293_000)


def test_rows_for_a_pruned_layer_hand_worked():
    model = torch.nn.Sequential(torch.nn.Linear(5, 4))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 1] = 7.0
        model[0].weight[2, 0] = 1.0
        model[0].weight[2, 4] = 2.0  # the 4×5 matrix of test_storage: 3 non-zeros
        model[0].bias.fill_(1.0)
    row = analyze(model, (5,)).layers[0]
    assert (row.name, row.type, row.shape, row.params, row.nnz) == ("0", "Linear", (4, 5), 24, 7)
    assert row.weight_sparsity == pytest.approx(17 / 20) and row.sparsity == pytest.approx(17 / 24)
    assert (row.macs, row.sparse_macs) == (20, 3)
    # weight bytes (8-bit indices) + bias 4·4 = 16 B dense in every format
    assert (row.dense_bytes, row.coo_bytes, row.csr_bytes, row.csc_bytes) == (96, 34, 36, 37)


def test_to_dict_is_json_and_table_renders():
    a = analyze(build_model("lenet5", (1, 8, 8)), (1, 8, 8), value_bits=8)
    d = json.loads(json.dumps(a.to_dict()))
    assert [r["name"] for r in d["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert d["value_bits"] == 8 and d["input_shape"] == [1, 8, 8]
    assert d["totals"]["params"] == sum(r["params"] for r in d["layers"])
    console = Console(record=True, width=200)
    console.print(a.rich_table())
    text = console.export_text()
    assert "conv2" in text and "total" in text


def test_plots_write_png(tmp_path):
    model = build_model("lenet300", (1, 8, 8))
    p = weight_histogram(model, tmp_path / "hist.png", layers=["fc1", "fc3"], bins=20)
    assert p.read_bytes().startswith(PNG_MAGIC)
    q = sparsity_bar_plot(analyze(model, (1, 8, 8)).to_dict(), tmp_path / "sparsity.png")
    assert q.read_bytes().startswith(PNG_MAGIC)
    assert [f.name for f in tmp_path.iterdir()] != [] and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(UserError):
        weight_histogram(model, tmp_path / "x.png", layers=["nope"])


def test_bad_input_shape():
    with pytest.raises(UserError):
        analyze(build_model("lenet300"), (0, 28, 28))
