"""Selective attention: MAC formulas against hand-worked values, the crop the pipeline takes, a small end-to-end run."""
import pytest
import torch
from torch import nn

from nncompress.analysis.macs import count_macs
from nncompress.architectures.lenet import LeNet5
from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError
from nncompress.search.cascade import LevelSpec, LocalizationCascade
from nncompress.search.selective_attention import SelectiveAttention, lenet5_macs, selective_attention_experiment


def test_lenet5_macs_hand_worked():
    # 28: 20·25·24² + 50·500·8² + 50·4²·500 + 500·10 = 288,000 + 1,600,000 + 400,000 + 5,000
    assert lenet5_macs(28) == 2_293_000
    # 56: 20·25·52² + 50·500·22² + 50·11²·500 + 5,000 = 1,352,000 + 12,100,000 + 3,025,000 + 5,000
    assert lenet5_macs(56) == 16_482_000
    assert count_macs(LeNet5((1, 56, 56)), (1, 56, 56)).total_macs == 16_482_000
    assert count_macs(LeNet5((1, 32, 32)), (1, 32, 32)).total_macs == lenet5_macs(32) == 3_522_000


def test_pipeline_macs_hand_worked():
    model = SelectiveAttention(LocalizationCascade(56, [LevelSpec(56, 2)]), LeNet5((1, 28, 28)), 28)
    # localizer on 28×28: 28²·8·9 = 56,448; 14²·16·72 = 225,792; 16·7·7·64 = 50,176; 64·2 = 128
    assert model.macs() == {"localizer_macs": 332_544, "classifier_macs": 2_293_000, "total_macs": 2_625_544}
    assert 1 - 2_625_544 / 16_482_000 > 0.84  # the saving the experiment reports for 56×56
    big = SelectiveAttention(LocalizationCascade(64, [LevelSpec(64, 2)]), LeNet5((1, 28, 28)), 28)
    # 32×32: 32²·72 = 73,728; 16²·1,152 = 294,912; 16·8·8·64 = 65,536; 128
    assert big.macs()["localizer_macs"] == 434_304
    # 64: 20·25·60² + 50·500·26² + 50·13²·500 + 5,000 = 1,800,000 + 16,900,000 + 4,225,000 + 5,000
    assert lenet5_macs(64) == 22_930_000
    two = SelectiveAttention(LocalizationCascade(56, [LevelSpec(56, 4), LevelSpec(28, 2, 6.0)]), LeNet5((1, 28, 28)), 28)
    # both levels see 14×14 inputs: 14²·72 + 7²·1,152 + 16·3·3·64 + 128 = 79,904 each
    assert two.macs() == {"localizer_macs": 159_808, "classifier_macs": 2_293_000, "total_macs": 2_452_808}


class _Flat(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_classifier_sees_the_window_at_the_localized_center():
    loc = LocalizationCascade(56, [LevelSpec(56, 2)]).eval()
    last = loc.levels[0].net.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.25, -0.25]))  # center 28 + 56·(0.25, −0.25) = (42, 14) → origin (28, 0)
    model = SelectiveAttention(loc, _Flat(), 28)
    x = torch.randn(2, 1, 56, 56)
    out = model(x)
    assert torch.equal(out, x[:, :, 28:56, 0:28].flatten(1))
    assert model.last_centers.tolist() == [[42.0, 14.0], [42.0, 14.0]]


def test_bad_crop_is_a_user_error():
    with pytest.raises(UserError):
        SelectiveAttention(LocalizationCascade(32, [LevelSpec(32, 2)]), _Flat(), 40)
    with pytest.raises(UserError, match="at least 28"):
        selective_attention_experiment(crop_px=20)


def test_untrained_models_are_refused_not_reported(tmp_path, template_digits):
    data = template_digits(tmp_path / "t.npz", n_per_class=20)
    with pytest.raises(DivergenceError, match="chance"):
        selective_attention_experiment(epochs=0, canvas=32, data=data, localizer_epochs=0)


def test_small_run_end_to_end(tmp_path, template_digits):
    r = selective_attention_experiment(epochs=2, canvas=32, data=template_digits(tmp_path / "t.npz", 50), placements=1,
                                       localizer_epochs=3)
    assert r["baseline_macs"] == 3_522_000
    # localizer on the 32 canvas pooled to 16: 16²·72 + 8²·1,152 + 16·4·4·64 + 128 = 18,432 + 73,728 + 16,384 + 128
    assert r["localizer_macs"] == 108_672 and r["classifier_macs"] == 2_293_000
    assert r["attention_macs"] == 2_401_672
    assert r["macs_saved_pct"] == pytest.approx(100 * (1 - 2_401_672 / 3_522_000))
    assert r["drop_pp"] == pytest.approx(r["baseline_top1"] - r["attention_top1"])
    assert r["attention_top1"] > 28.0 and r["baseline_top1"] > 28.0
    assert r["mean_error_px"] < 3.0  # a 32-px canvas leaves a 28-px digit only ±2 px of room
