"""NetAdapt: the latency table measures real layers, the loop shrinks the network until measured latency fits."""
import pytest
import torch
from torch import nn

from nncompress.data import load_dataset, make_loaders
from nncompress.pruning.structured.measure import latency_pair_ms
from nncompress.pruning.structured.netadapt import LatencyTable, layer_widths, netadapt
from nncompress.training import TrainConfig, evaluate, train


class Wide(nn.Module):
    """Two wide 3×3 convolutions dominate the latency, as in real CNNs."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 48, 3, padding=1)
        self.c2 = nn.Conv2d(48, 48, 3, padding=1)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_latency_table_times_layers_at_the_asked_widths():
    model, x = Wide().eval(), torch.randn(32, 1, 8, 8)
    table = LatencyTable(model, x, threads=1, repeats=5)
    assert table.input_shapes["c2"] == (32, 48, 8, 8) and table.input_shapes["fc"] == (32, 48)
    wide, narrow = table.layer_ms("c2", 48, 48), table.layer_ms("c2", 4, 4)
    assert wide > 5 * narrow  # 144× the MACs: no scheduler noise hides that
    assert ("c2", 4, 4) in table.table and table.model_ms > 0
    full = {"c1": (1, 48), "c2": (48, 48), "fc": (48, 10)}
    assert table.estimate_ms(full) == pytest.approx(table.model_ms)  # the estimate is anchored on the measured model


def test_netadapt_meets_a_measured_latency_budget():
    torch.manual_seed(0)
    ds = load_dataset("digits").subset(800, 300)
    train_loader, test_loader = make_loaders(ds, batch_size=64)
    val = load_dataset("digits")
    _, val_loader = make_loaders(val.subset(1, 300))  # held-out digits for choosing proposals
    model = Wide()
    train(model, train_loader, TrainConfig(epochs=3, lr=0.05, progress=False))
    top1 = evaluate(model, test_loader)
    x = ds.x_test[:32]
    result = netadapt(model, train_loader, val_loader, x, latency_budget=0.5, step=0.25, decay=1.0, short_steps=5,
                      long_epochs=1, repeats=5)
    assert result.history, "no iteration ran"
    widths = layer_widths(result.model)
    assert widths["c2"][1] < 48 or widths["c1"][1] < 48
    before_ms, after_ms = latency_pair_ms(model, result.model, x, repeats=15)  # interleaved: shared-CPU noise hits both
    assert after_ms < 0.9 * before_ms  # the loop aims at 0.5×; other processes on this CPU blur the figure
    assert evaluate(result.model, test_loader) > top1 - 15
    assert model.c2.out_channels == 48  # the input model is untouched


# --- MobileNetV3's selection rule and several resources (Howard et al. 2019, §4.2) ---
import math  # noqa: E402
import re  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from nncompress.analysis.counts import count_parameters  # noqa: E402
from nncompress.analysis.macs import count_macs  # noqa: E402
from nncompress.cli import app  # noqa: E402
from nncompress.core.errors import UserError  # noqa: E402
from nncompress.pruning.structured.netadapt import (LayerCosts, Proposal, check_resources, proposal_score,  # noqa: E402
                                                    select_proposal)


def test_ratio_rule_picks_least_accuracy_lost_per_latency_saved():
    # current network: 90.0 % at 10.0 ms. Hand-worked ΔAcc/|ΔLat|:
    #   a: 89.9 % at 9.8 ms → −0.1/0.2 = −0.5 per ms   (most accurate: NetAdapt's choice)
    #   b: 89.0 % at 7.0 ms → −1.0/3.0 = −0.333 per ms (least lost per ms saved: MobileNetV3's choice)
    #   c: 89.5 % at 9.0 ms → −0.5/1.0 = −0.5 per ms
    props = [Proposal("a", 89.9, 9.8), Proposal("b", 89.0, 7.0), Proposal("c", 89.5, 9.0)]
    assert select_proposal(props, "accuracy", 90.0, 10.0) == 0
    assert select_proposal(props, "ratio", 90.0, 10.0) == 1
    assert proposal_score(props[1], "ratio", 90.0, 10.0)[0] == pytest.approx(-1 / 3)
    # the same proposals in normalized units (C = ms / 10 ms): the ratio scales by 10, the choice does not change
    normalized = [Proposal(p.name, p.top1, p.cost / 10.0) for p in props]
    assert select_proposal(normalized, "ratio", 90.0, 1.0) == 1
    assert proposal_score(normalized[1], "ratio", 90.0, 1.0)[0] == pytest.approx(-10 / 3)
    # a proposal that gains accuracy beats every loss; one saving nothing is never chosen by the ratio
    assert select_proposal([*props, Proposal("d", 90.2, 9.9)], "ratio", 90.0, 10.0) == 3
    assert select_proposal([Proposal("same", 95.0, 10.0), props[2]], "ratio", 90.0, 10.0) == 1
    assert select_proposal([Proposal("same", 95.0, 10.0)], "ratio", 90.0, 10.0) is None
    # equal ratios (exact in binary: −0.5/1.0 and −1.0/2.0 from 90 % at 8 ms): the more accurate wins
    assert select_proposal([Proposal("y", 89.0, 6.0), Proposal("x", 89.5, 7.0)], "ratio", 90.0, 8.0) == 1
    assert select_proposal([], "accuracy") is None
    with pytest.raises(UserError, match="unknown NetAdapt rule 'best'"):
        select_proposal(props, "best")


class Tiny(nn.Module):
    """8×8 input: conv 1→4 (3×3, pad 1), conv 4→6 (3×3, stride 2 → 4×4), depthwise 6 (3×3), avg pool, linear 6→10."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_macs_params_energy_by_formula_on_a_tiny_net():
    net = Tiny()
    costs = LayerCosts(net, torch.randn(3, 1, 8, 8))
    assert costs.positions == {"c1": 64, "c2": 16, "dw": 16, "fc": 1}
    full = layer_widths(net)
    # params: c1 4·1·9+4 = 40, c2 6·4·9+6 = 222, dw 6·1·9+6 = 60, fc 6·10+10 = 70 → 392
    # MACs:   c1 36·64 = 2304, c2 216·16 = 3456, dw 54·16 = 864, fc 60 → 6684
    assert costs.total("params", full) == 392 and costs.total("macs", full) == 6684
    assert count_parameters(net).params == 392 and count_macs(net, (1, 8, 8)).total_macs == 6684  # the analysis counters agree
    # two of c2's filters removed: c2 (4→4), dw (4), fc (4→10)
    thin = {**full, "c2": (4, 4), "dw": (4, 4), "fc": (4, 10)}
    # params 40 + (144+4) + (36+4) + (40+10) = 278; MACs 2304 + 144·16 + 36·16 + 40 = 5224
    assert costs.total("params", thin) == 278 and costs.total("macs", thin) == 5224
    # energy, Horowitz fp32: 4.6 pJ per MAC + one 640 pJ DRAM read per 32-bit weight: 6684·4.6 + 392·640
    assert costs.total("energy", full) == pytest.approx(6684 * 4.6 + 392 * 640)


def test_resources_are_validated_and_weights_normalized():
    assert check_resources({"latency": 0.5, "macs": 0.7}) == {"latency": 1.0}  # the first is the primary
    assert check_resources({"latency": 0.5, "macs": 0.7}, {"latency": 1, "macs": 3}) == {"latency": 0.25, "macs": 0.75}
    for resources, weights, message in (({"flops": 0.5}, None, "unknown resource 'flops'"),
                                        ({"macs": 1.2}, None, "in \\(0, 1\\)"),
                                        ({}, None, "at least one resource"),
                                        ({"macs": 0.5}, {"params": 1}, "has no budget"),
                                        ({"macs": 0.5}, {"macs": 0}, "sum to 0")):
        with pytest.raises(UserError, match=message):
            check_resources(resources, weights)
    with pytest.raises(UserError, match="not both"):
        netadapt(Tiny(), [], [], torch.randn(2, 1, 8, 8), 0.5, resources={"macs": 0.5})
    with pytest.raises(UserError, match="unknown NetAdapt rule"):
        netadapt(Tiny(), [], [], torch.randn(2, 1, 8, 8), resources={"macs": 0.5}, rule="fastest")


def test_netadapt_meets_several_budgets_with_the_ratio_rule():
    torch.manual_seed(0)
    ds = load_dataset("digits").subset(600, 200)
    train_loader, val_loader = make_loaders(ds, batch_size=64)
    model = Wide()
    train(model, train_loader, TrainConfig(epochs=2, lr=0.05, progress=False))
    x = ds.x_test[:8]
    params0, macs0 = count_parameters(model).params, count_macs(model, (1, 8, 8)).total_macs
    result = netadapt(model, train_loader, val_loader, x, resources={"macs": 0.6, "params": 0.5}, weights={"macs": 1, "params": 1},
                      rule="ratio", step=0.15, decay=1.0, short_steps=2, long_epochs=0, repeats=2)
    assert result.reached and result.table is None  # no latency budget: nothing timed layer by layer
    assert count_macs(result.model, (1, 8, 8)).total_macs <= 0.6 * macs0  # both budgets, counted by the analysis
    assert count_parameters(result.model).params <= 0.5 * params0
    assert result.resources_before == {"macs": macs0, "params": params0}
    cost = 1.0
    for h in result.history:  # every step cut C = (MACs/MACs0 + params/params0)/2 by ≥ the step, or met both budgets
        m, p = h["measured"]["macs"], h["measured"]["params"]
        assert h["cost"] == pytest.approx((m / macs0 + p / params0) / 2)
        assert h["cost"] <= cost - 0.15 + 1e-9 or (m <= 0.6 * macs0 and p <= 0.5 * params0)
        assert h["score"] == pytest.approx((h["val_top1"] - h["val_top1_before"]) / (cost - h["cost"]))  # ΔAcc/|ΔC|
        cost = h["cost"]
    assert not math.isnan(result.latency_ms_after)


def test_cli_resources_and_rule():
    for args, message in ((["--resource", "flops=0.5"], "unknown resource 'flops'"),
                          (["--resource", "macs"], "NAME=BUDGET"),
                          (["--resource", "macs=0.5", "--latency-budget", "0.5"], "not both"),
                          (["--latency-budget", "0.5", "--rule", "best"], "unknown --rule 'best'"),
                          (["--weight", "macs=1"], "--latency-budget"),
                          ([], "give --latency-budget")):
        r = CliRunner().invoke(app, ["netadapt", *args])
        assert isinstance(r.exception, UserError), (args, r.output)
        assert re.search(message, str(r.exception)) and "\n" not in str(r.exception)
    r = CliRunner().invoke(app, ["netadapt", "--resource", "macs=0.8", "--resource", "energy=0.9", "--rule", "ratio", "--model", "lenet5",
                                 "--data", "digits", "--pretrain-epochs", "1", "--short-steps", "2", "--long-epochs", "0", "--json"])
    assert r.exit_code == 0, r.output
    import json
    report = json.loads(r.output)
    assert report["rule"] == "ratio" and report["resources"] == {"macs": 0.8, "energy": 0.9}
    assert report["after"]["macs"] <= 0.8 * report["before"]["macs"]  # measured by the command's own counter
