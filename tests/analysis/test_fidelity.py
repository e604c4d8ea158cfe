import math

import pytest
import torch

from nncompress.analysis.fidelity import fidelity
from nncompress.core.errors import UserError


def test_fidelity_on_hand_worked_logits():
    ref = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    out = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 2.0]])
    f = fidelity(ref, out, k=2)
    assert f["top1_agreement"] == 50.0  # row 2: reference says class 2, the copy says 1
    assert f["top5_agreement"] == 100.0  # ... but class 2 is in the copy's top 2
    # row 1 identical (KL 0); row 2: KL = Σ p(r − c) − log Z_r + log Z_c = −2·e/(1+e+e²) − ln(1+e+e²) + ln(1+e³+e²)
    z_r, z_c = 1 + math.e + math.e ** 2, 1 + math.e ** 3 + math.e ** 2
    kl_row2 = -2 * math.e / z_r - math.log(z_r) + math.log(z_c)
    assert kl_row2 == pytest.approx(0.45195, abs=1e-5)
    assert f["kl"] == pytest.approx(kl_row2 / 2, abs=1e-9)
    assert f["n"] == 2


def test_top5_agreement_counts_the_reference_answer_in_the_top_five():
    ref = torch.zeros(2, 7)
    ref[0, 0] = ref[1, 6] = 5.0  # reference answers: class 0, class 6
    out = torch.arange(7.0).repeat(2, 1)  # copy ranks 6 > 5 > 4 > 3 > 2 > 1 > 0: class 0 is 7th, class 6 first
    f = fidelity(ref, out)
    assert f["top1_agreement"] == 50.0 and f["top5_agreement"] == 50.0


def test_identical_logits_are_perfectly_faithful():
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    f = fidelity(x, x.clone())
    assert f["top1_agreement"] == 100.0 and f["top5_agreement"] == 100.0 and abs(f["kl"]) < 1e-12


@pytest.mark.parametrize("a,b", [(torch.zeros(2, 3), torch.zeros(3, 3)), (torch.zeros(0, 3), torch.zeros(0, 3)),
                                 (torch.zeros(3), torch.zeros(3)), (torch.zeros(2, 3), torch.full((2, 3), float("nan")))])
def test_bad_logits_are_refused(a, b):
    with pytest.raises(UserError, match="fidelity"):
        fidelity(a, b)
