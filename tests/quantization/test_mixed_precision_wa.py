"""Mixed precision of weights and activations: the greedy knapsack on hand-worked budgets, the graph it builds,
and an end-to-end run whose accuracy is measured on the built graph."""
import pytest
import torch

from nncompress.core.errors import UserError
from nncompress.quantization.fake_quant import FakeQuantize
from nncompress.quantization.mixed_precision import (
    choose_wa_bits,
    layer_bops,
    layer_input_quantizers,
    mixed_precision_wa,
    packed_weight_bytes,
    quantize_mixed,
)
from nncompress.training import evaluate

# two layers A (100 MACs) and B (10 MACs), each reading its own activation quantizer qa / qb
W_SENS = {"A": {8: 0.0, 4: 1.0}, "B": {8: 0.0, 4: 0.01}}
A_SENS = {"qa": {8: 0.0, 4: 0.5}, "qb": {8: 0.0, 4: 5.0}}
MACS = {"A": 100, "B": 10}
INPUT = {"A": "qa", "B": "qb"}


def test_bops_formula():
    assert layer_bops(MACS, {"A": 8, "B": 4}, {"qa": 4, "qb": 8}, INPUT) == 100 * 8 * 4 + 10 * 4 * 8
    assert layer_bops({"A": 5}, {"A": 8}, {}, {"A": None}) == 5 * 8 * 32  # float input counts 32 bits
    assert packed_weight_bytes(10, 2, 4) == 5 + 8 and packed_weight_bytes(3, 1, 4) == 2 + 4


def test_greedy_lowers_the_cheapest_unit_per_bop_saved():
    # full W8A8: 100·64 + 10·64 = 7040 BOPs.
    # Budget 6000: per BOP saved, B's weights cost 0.01/320, qa 0.5/3200, A's weights 1.0/3200, qb 5/320 → lower
    # B's weights (6720, still over), then qa (8·4·100 + 4·8·10 = 3520): done.
    assert choose_wa_bits(W_SENS, A_SENS, MACS, INPUT, budget_bops=6000) == ({"A": 8, "B": 4}, {"qa": 4, "qb": 8})
    # Budget 3000: next A's weights (1.0/1600 < qb's 5/160) → 4·4·100 + 4·8·10 = 1920.
    assert choose_wa_bits(W_SENS, A_SENS, MACS, INPUT, budget_bops=3000) == ({"A": 4, "B": 4}, {"qa": 4, "qb": 8})
    # Budget 7040 is met by W8A8 as is.
    assert choose_wa_bits(W_SENS, A_SENS, MACS, INPUT, budget_bops=7040) == ({"A": 8, "B": 8}, {"qa": 8, "qb": 8})
    # Budget 1000: all at 4 bits gives 1600 + 160 = 1760: impossible, said so.
    with pytest.raises(UserError, match="1760 BOPs"):
        choose_wa_bits(W_SENS, A_SENS, MACS, INPUT, budget_bops=1000)


def test_shared_activation_quantizer_saves_for_every_reader():
    # qa feeds both layers: lowering it saves (100 + 10)·8·4 = 3520 BOPs for 0.5, cheaper per BOP than any weight here
    w = {"A": {8: 0.0, 4: 1.0}, "B": {8: 0.0, 4: 0.2}}
    a = {"qa": {8: 0.0, 4: 0.5}}
    assert choose_wa_bits(w, a, MACS, {"A": "qa", "B": "qa"}, budget_bops=7040 - 3000) == ({"A": 8, "B": 8}, {"qa": 4})


def test_size_budget_only_moves_weights():
    wbytes = {"A": {8: 100, 4: 50}, "B": {8: 1000, 4: 500}}
    # 1100 bytes at W8; budget 700: B saves 500 bytes for 0.01, A 50 bytes for 1.0 → B only (600 bytes)
    assert choose_wa_bits(W_SENS, A_SENS, MACS, INPUT, weight_bytes=wbytes, budget_bytes=700) == ({"A": 8, "B": 4}, {"qa": 8, "qb": 8})


def test_budget_errors():
    with pytest.raises(UserError, match="needs a budget"):
        choose_wa_bits(W_SENS, A_SENS, MACS, INPUT)
    with pytest.raises(UserError, match="positive"):
        choose_wa_bits(W_SENS, A_SENS, MACS, INPUT, budget_bops=0)
    with pytest.raises(UserError, match="weight_bytes"):
        choose_wa_bits(W_SENS, A_SENS, MACS, INPUT, budget_bytes=10)


def test_mixed_graph_has_the_asked_bits(trained_net, digits):
    calib = digits.x_train[:128]
    plain = quantize_mixed(trained_net, calib, {}, {}, num_batches=2)
    inputs = layer_input_quantizers(plain)
    assert set(inputs) == {"conv1", "conv2", "fc"} and all(q is not None for q in inputs.values())
    assert len(set(inputs.values())) == 3  # input, conv1 out, conv2 out (fc reads it through max-pool and flatten)
    q_conv2 = inputs["conv2"]
    gm = quantize_mixed(trained_net, calib, {"conv1": 4}, {q_conv2: 4}, num_batches=2)
    assert gm.get_submodule(q_conv2).bits == 4 and gm.get_submodule(inputs["fc"]).bits == 8
    assert gm.get_submodule("conv1").weight_quant.bits == 4 and gm.get_submodule("conv2").weight_quant.bits == 8
    # 4-bit unsigned activation codes: at most 16 distinct values reach conv2
    seen = {}
    h = gm.get_submodule("conv2").register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    gm(calib[:16])
    h.remove()
    assert 2 < len(torch.unique(seen["x"])) <= 16
    with pytest.raises(UserError, match="not activation quantizers"):
        quantize_mixed(trained_net, calib, {}, {"nope": 4}, num_batches=1)


def test_end_to_end_meets_the_budget_and_measures_accuracy(trained_net, digits, loaders):
    calib = digits.x_train[:128]
    probe = mixed_precision_wa(trained_net, calib, budget_bops=10**15, num_batches=2, sens_batches=1)
    assert probe.bops == probe.max_bops and set(probe.weight_bits.values()) == {8}  # a loose budget keeps W8A8
    budget = probe.max_bops // 2  # the cost of uniform W4A8
    res = mixed_precision_wa(trained_net, calib, budget_bops=budget, num_batches=2, sens_batches=1,
                             eval_fn=lambda m: evaluate(m, loaders[1]))
    assert res.bops <= budget and res.bops_ratio >= 2.0
    assert res.bops == sum(r["macs"] * r["weight_bits"] * r["act_bits"] for r in res.layers)
    assert res.accuracy == evaluate(res.model, loaders[1])  # measured on the built graph, not predicted
    assert res.accuracy > 80
    for name, s in res.weight_sensitivity.items():
        assert s[4] >= s[8] >= 0, name
    for q, s in res.act_sensitivity.items():
        assert s[4] >= s[8] >= 0, q
    assert isinstance(res.model.get_submodule(next(iter(res.act_bits))), FakeQuantize)
    assert sum(res.summary()["layers_per_setting"].values()) == 3
