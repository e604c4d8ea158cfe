"""How faithfully a compressed model reproduces its reference, label-free: top-1 / top-5 agreement and KL.

Where no labelled test set exists (a pretrained ImageNet model scored on packaged photos), what compression
must keep is the reference's *function*. Over N inputs with reference logits r and compressed logits c:

    top-1 agreement = 100 · mean_i [argmax r_i = argmax c_i]
    top-5 agreement = 100 · mean_i [argmax r_i ∈ top-5(c_i)]        (the reference's answer survives in c's top 5)
    KL              = mean_i Σ_k p_ik (log p_ik − log q_ik),  p = softmax(r), q = softmax(c)   (nats)

KL(p ‖ q) is the label-free sensitivity used for mixed precision as well (HAWQ's view; Nagel et al. 2021 §3):
0 for identical outputs, and it weights errors by how much the reference believed in each class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nncompress.core.errors import UserError


def fidelity(reference_logits: torch.Tensor, logits: torch.Tensor, k: int = 5) -> dict[str, float]:
    """{top1_agreement (%), top5_agreement (%), kl (nats, mean per input), n} of `logits` against `reference_logits`."""
    if not isinstance(reference_logits, torch.Tensor) or not isinstance(logits, torch.Tensor):
        raise UserError("fidelity: pass two logits tensors [N, classes]")
    if reference_logits.shape != logits.shape or reference_logits.dim() != 2 or reference_logits.shape[0] == 0:
        raise UserError(f"fidelity: logits must both be [N, classes] with N > 0 and the same shape, got "
                        f"{tuple(reference_logits.shape)} and {tuple(logits.shape)}")
    r, c = reference_logits.detach().double(), logits.detach().double()
    if not (torch.isfinite(r).all() and torch.isfinite(c).all()):
        raise UserError("fidelity: logits hold NaN or inf; the model diverged or its inputs are broken")
    k = min(k, r.shape[1])
    ref_top1 = r.argmax(1)
    top1 = (c.argmax(1) == ref_top1).double().mean()
    topk = (c.topk(k, dim=1).indices == ref_top1[:, None]).any(1).double().mean()
    log_p, log_q = F.log_softmax(r, 1), F.log_softmax(c, 1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    return {"top1_agreement": 100.0 * float(top1), "top5_agreement": 100.0 * float(topk), "kl": float(kl), "n": int(r.shape[0])}
