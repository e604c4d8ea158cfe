"""Quantized nn.LSTM / nn.GRU for the module-swap path: int8 weight codes as buffers, integer gate GEMMs.

The scheme PyTorch's old dynamic LSTM used (weights int8 ahead, activations quantized per call), on
`torch._int_mm` instead of torch.ao: for each layer and direction, the input→gate product W_ih·x_t of all time
steps is one int8 GEMM (per-token activation scales), and the hidden→gate product W_hh·h_{t−1} one int8 GEMM
per step; the gate nonlinearities and the cell state stay float (Hochreiter & Schmidhuber 1997; GRU: Cho et al.
2014, n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t−1} + b_hn)), h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t−1}).
Weight-only mode dequantizes the (int8 or packed int4) weights and runs the same recurrence in float.
`simulate` runs the recurrence on fake-quantized inputs and dequantized weights: the reference the kernels
are checked against. ONNX Runtime's DynamicQuantizeLSTM (`rnn_int8`) is the exported-model alternative for LSTM;
ORT has no integer GRU, this module has one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.quantization.modules import QuantizedWeight, dynamic_act_qparams, int8_matmul, quantize_rows
from nncompress.quantization.quantizer import fake_quantize

_GATES = {"LSTM": 4, "GRU": 3}


def _kernel_linear(x2d: torch.Tensor, w: QuantizedWeight) -> torch.Tensor:
    s_x = dynamic_act_qparams(x2d)
    return int8_matmul(quantize_rows(x2d, s_x), w.int_codes()).float() * (s_x[:, None] * w.channel_scale()[None, :])


def _sim_linear(x2d: torch.Tensor, w: QuantizedWeight) -> torch.Tensor:
    s = dynamic_act_qparams(x2d)
    xq = fake_quantize(x2d, s, torch.zeros_like(s, dtype=torch.int32), -127, 127, axis=0)
    return F.linear(xq, w.dequantize())


def _float_linear(x2d: torch.Tensor, w: QuantizedWeight) -> torch.Tensor:
    return F.linear(x2d, w.dequantize())


class QuantizedRNN(nn.Module):
    """LSTM or GRU with quantized weights `weight_ih_l{k}{_reverse}` / `weight_hh_l{k}{_reverse}` (QuantizedWeight
    holders) and float biases; act_mode "dynamic" (int8 GEMMs) or "none" (weight-only)."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool,
                 bidirectional: bool, weights: dict[str, QuantizedWeight], biases: dict[str, torch.Tensor], act_mode: str = "dynamic"):
        super().__init__()
        if cell not in _GATES:
            raise UserError(f"unknown recurrent cell '{cell}': LSTM or GRU")
        if act_mode not in ("dynamic", "none"):
            raise UserError(f"recurrent layers run act_mode 'dynamic' or 'none' (weight-only), not '{act_mode}'")
        self.cell, self.input_size, self.hidden_size, self.num_layers = cell, int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.bidirectional, self.act_mode = bool(bias), bool(batch_first), bool(bidirectional), act_mode
        self.weights = nn.ModuleDict(weights)
        for k, v in biases.items():
            self.register_buffer(k, v.detach().float().clone())

    @classmethod
    def from_float(cls, rnn: nn.Module, act_mode: str, bits: int = 8, granularity: str = "channel", group_size: int | None = None,
                   name: str = "") -> "QuantizedRNN":
        where = f"layer '{name}' ({type(rnn).__name__})" if name else type(rnn).__name__
        if type(rnn) not in (nn.LSTM, nn.GRU):
            raise UserError(f"{where}: only nn.LSTM and nn.GRU have quantized recurrent modules")
        if getattr(rnn, "proj_size", 0):
            raise UserError(f"{where}: LSTM with proj_size={rnn.proj_size} is not supported; skip this layer")
        if act_mode != "none" and granularity == "group":
            raise UserError(f"{where}: int8 gate GEMMs need per-channel weights; use weight-only for group-wise weights")
        weights, biases = {}, {}
        for pname, p in rnn.named_parameters():
            if pname.startswith("weight_"):
                weights[pname] = QuantizedWeight.from_float(p, bits, granularity, group_size)
            else:
                biases[pname] = p
        return cls(type(rnn).__name__, rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.bias, rnn.batch_first,
                   rnn.bidirectional, weights, biases, act_mode)

    @property
    def weight_q(self) -> QuantizedWeight:  # the first holder: what generic code (device, storage) looks at
        return next(iter(self.weights.values()))

    def storage_bytes(self) -> int:
        return sum(w.storage_bytes() for w in self.weights.values()) + sum(b.numel() * 4 for _, b in self.named_buffers(recurse=False))

    def _b(self, name: str) -> torch.Tensor | None:
        return getattr(self, name) if self.bias else None

    def _direction(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, layer: int, reverse: bool, lin):
        sfx = f"_l{layer}" + ("_reverse" if reverse else "")
        L, N, _ = x.shape
        gi = lin(x.reshape(L * N, -1), self.weights[f"weight_ih{sfx}"]).reshape(L, N, -1)
        b_ih, b_hh = self._b(f"bias_ih{sfx}"), self._b(f"bias_hh{sfx}")
        if b_ih is not None:
            gi = gi + b_ih
        w_hh = self.weights[f"weight_hh{sfx}"]
        outs = [None] * L
        for t in (range(L - 1, -1, -1) if reverse else range(L)):
            gh = lin(h, w_hh)
            if b_hh is not None:
                gh = gh + b_hh
            if self.cell == "LSTM":
                i, f, g, o = (gi[t] + gh).chunk(4, 1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                ir, iz, in_ = gi[t].chunk(3, 1)
                hr, hz, hn = gh.chunk(3, 1)
                r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
                n = torch.tanh(in_ + r * hn)
                h = (1 - z) * n + z * h
            outs[t] = h
        return torch.stack(outs), h, c

    def _run(self, x, hx, lin):
        if isinstance(x, nn.utils.rnn.PackedSequence):
            raise UserError(f"quantized {self.cell}: PackedSequence input is not supported; pass a padded tensor")
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        x = x.float()
        dirs = 2 if self.bidirectional else 1
        n = x.shape[1]
        zeros = x.new_zeros(self.num_layers * dirs, n, self.hidden_size)
        if self.cell == "LSTM":
            h0, c0 = hx if hx is not None else (zeros, zeros)
        else:
            h0, c0 = (hx if hx is not None else zeros), None
        if unbatched and hx is not None:
            h0, c0 = h0.unsqueeze(1), (c0.unsqueeze(1) if c0 is not None else None)
        hs, cs = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                y, h, c = self._direction(x, h0[k], None if c0 is None else c0[k], layer, d == 1, lin)
                outs.append(y)
                hs.append(h)
                cs.append(c)
            x = torch.cat(outs, 2) if dirs == 2 else outs[0]
        out = x.squeeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        h_n = torch.stack(hs)
        h_n = h_n.squeeze(1) if unbatched else h_n
        if self.cell == "LSTM":
            c_n = torch.stack(cs)
            return out, (h_n, c_n.squeeze(1) if unbatched else c_n)
        return out, h_n

    def forward(self, x, hx=None):
        return self._run(x, hx, _kernel_linear if self.act_mode == "dynamic" else _float_linear)

    @torch.no_grad()
    def simulate(self, x, hx=None):
        return self._run(x, hx, _sim_linear if self.act_mode == "dynamic" else _float_linear)

    def extra_repr(self) -> str:
        return (f"{self.cell}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}), act_mode={self.act_mode}")
