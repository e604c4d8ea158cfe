"""Graph capture that real models survive: opaque leaves for untraceable submodules, torch.export first,
one line naming the module and operation when nothing works; the zoo's ShuffleNets prune and quantize."""
import warnings

import pytest
import torch
from torch import nn

from nncompress.core.capture import capture_graph, trace_modules
from nncompress.core.errors import UserError


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow: fx has no bool for a Proxy
            return x
        return -x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.body = nn.Sequential(nn.ReLU(), Gate())
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.body(self.conv(x)).mean((2, 3)))


class TopLevel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(-x)


def test_untraceable_submodule_is_kept_whole_and_named():
    torch.manual_seed(0)
    net = Net().eval()
    with pytest.warns(RuntimeWarning, match=r"'body\.1' \(Gate: TraceError: .* `if x\.sum\(\) > 0:"):
        gm = trace_modules(net, "a test")
    assert list(gm.meta["opaque_modules"]) == ["body.1"]
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert calls == ["conv", "body.0", "body.1", "fc"]  # the rest is still traced module by module
    x = torch.randn(5, 3, 6, 6)
    assert torch.equal(gm(x), net(x)) and torch.equal(gm(-x), net(-x))  # both branches: the leaf runs real Python


def test_top_level_failure_is_one_line_naming_the_model_and_line():
    with pytest.raises(UserError) as info:
        trace_modules(TopLevel(), "structured pruning")
    msg = str(info.value)
    assert "\n" not in msg
    assert "top-level forward of TopLevel" in msg and "`if x.sum() > 0:`" in msg and "structured pruning" in msg


def test_capture_graph_prefers_torch_export_with_a_dynamic_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    gm = capture_graph(net, torch.randn(1, 3))  # a batch of 1 is widened so the batch axis stays symbolic
    assert gm.meta["captured_by"] == "torch.export"
    x = torch.randn(7, 3)
    assert torch.allclose(gm(x), net(x))


def test_capture_graph_takes_keyword_inputs():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)

        def forward(self, input_ids, attention_mask):
            return (self.emb(input_ids) * attention_mask.unsqueeze(-1)).sum(1)

    torch.manual_seed(0)
    net = Kw().eval()
    gm = capture_graph(net, {"input_ids": torch.randint(0, 10, (2, 5)), "attention_mask": torch.ones(2, 5)})
    assert gm.meta["captured_by"] == "torch.export"
    ids, mask = torch.randint(0, 10, (3, 9)), torch.ones(3, 9)  # other batch and sequence lengths
    assert torch.allclose(gm(input_ids=ids, attention_mask=mask), net(ids, mask))


def test_capture_graph_falls_back_to_fx_and_errors_when_both_fail():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gm = capture_graph(Net(), torch.randn(2, 3, 6, 6))
    assert gm.meta["captured_by"] in ("torch.export", "torch.fx")
    with pytest.raises(UserError, match="TopLevel") as info:
        capture_graph(TopLevel(), torch.randn(2, 3))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["shufflenet_v1", "shufflenet_v2"])
def test_shufflenets_trace_and_statically_quantize(name):
    from nncompress.architectures import build_model
    from nncompress.quantization.ptq import quantize_static

    torch.manual_seed(0)
    model = build_model(name, (3, 32, 32), 10, width_mult=0.5).eval()
    gm = trace_modules(model)
    assert gm.meta["opaque_modules"] == {}  # channel_shuffle traces: nothing kept whole
    x = torch.randn(8, 3, 32, 32)
    q = quantize_static(model, [x], bits=8)
    fq = [m for m in q.modules() if type(m).__name__ == "FakeQuantize"]
    assert fq, "no quantizers were inserted"
    with torch.no_grad():
        ref, out = model(x), q(x)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < 0.1, rel  # 8-bit per-channel simulation stays close to float


def test_shufflenet_v2_channel_prunes():
    from nncompress.architectures import build_model
    from nncompress.pruning.structured.prune import prune_channels

    torch.manual_seed(0)
    model = build_model("shufflenet_v2", (3, 32, 32), 10, width_mult=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    thin = prune_channels(model, x, ratio=0.5)
    before, after = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in thin.parameters())
    assert after < 0.8 * before
    assert thin(x).shape == (2, 10)
