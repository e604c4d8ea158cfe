"""Inference-only layers that multiply by a sparse weight instead of a dense one.

A pruned layer still stores (and multiplies by) every zero; these layers keep only the kept weights in CSR
form — row pointers, column indices, values — and run one of several executors over them:

- ``"csr"``: ``torch.sparse`` CSR with int32 indices through ``torch.addmm`` (MKL on x86 builds; honours
  ``torch.set_num_threads``). int64 indices take a slower generic path in torch 2.x, so indices are int32.
- ``"bsr<b>"``: ``torch.sparse`` BSR with b×b blocks; pays off only when the kept weights cluster in blocks.
- ``"scipy"``: ``scipy.sparse.csr_matrix`` (int32 indices); single-threaded, low call overhead.
- ``"kernel"``: the small C kernel of `nncompress.sparse.kernel` (column panels that keep x in L1, uint16 indices).

Which one is fastest depends on the layer's shape, sparsity, batch size, thread count and CPU, so
`sparsify` measures them per layer; these classes only execute. They hold no Parameters (nothing to
train): a forward in training mode or on an input that requires grad raises a UserError instead of
silently dropping gradients. The sparse arrays are buffers, so they appear in ``state_dict()``.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nncompress.core.errors import UserError
from nncompress.sparse import kernel as _kernel

BASE_FORMATS = ("csr", "scipy", "kernel")
"""Formats built from the CSR arrays alone; "bsr<b>" (e.g. "bsr16") builds blocks and needs b to divide the shape."""

Executor = Callable[[torch.Tensor], torch.Tensor]


def check_format(fmt: str) -> str:
    if fmt in BASE_FORMATS:
        return fmt
    if fmt.startswith("bsr") and fmt[3:].isdigit() and int(fmt[3:]) >= 1:
        return fmt
    raise UserError(f"unknown sparse format {fmt!r}: use one of {', '.join(BASE_FORMATS)} or bsr<b> (e.g. bsr16)")


def _inference_only(module: nn.Module, x: torch.Tensor) -> None:
    """Refuse what a sparse layer cannot do (it has no gradient path, and runs float32 on CPU only)."""
    if module.training or (torch.is_grad_enabled() and x.requires_grad):
        raise UserError(f"{type(module).__name__} executes a sparse weight for inference only: call model.eval() and run "
                        "under torch.no_grad() (keep the dense model for training or fine-tuning)")
    if x.dtype != torch.float32 or x.device.type != "cpu":
        raise UserError(f"{type(module).__name__} runs float32 on CPU, got {x.dtype} on {x.device}; "
                        "keep the dense model for other dtypes or devices")


def _quiet(fn: Callable) -> Callable:
    """Silence torch's "sparse CSR support is in beta" / "invariant checks disabled" warnings: we build the
    arrays ourselves (row-major, in range), and users should not see a warning per layer."""
    def wrapped(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Sparse (CSR|BSR|invariant)", category=UserWarning)
            return fn(*args, **kwargs)
    return wrapped


@_quiet
def _build_executor(fmt: str, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                    bias: torch.Tensor | None) -> Executor:
    """A function x (N, in) float32 contiguous -> (N, out) for one format, closed over the CSR arrays."""
    out_f, in_f = shape
    if fmt == "csr":
        w = torch.sparse_csr_tensor(crow.to(torch.int32), col.to(torch.int32), values, shape)
        b = None if bias is None else bias.reshape(-1, 1)

        def run_csr(x: torch.Tensor) -> torch.Tensor:
            y = torch.mm(w, x.t()) if b is None else torch.addmm(b, w, x.t())
            return y.t().contiguous()
        return run_csr
    if fmt.startswith("bsr"):
        block = int(fmt[3:])
        if out_f % block or in_f % block:
            raise UserError(f"format {fmt}: block size {block} does not divide the weight shape {list(shape)}")
        dense = torch.sparse_csr_tensor(crow, col, values, shape).to_dense()
        w = dense.to_sparse_bsr((block, block))
        del dense
        b = None if bias is None else bias.reshape(-1, 1)

        def run_bsr(x: torch.Tensor) -> torch.Tensor:
            y = torch.mm(w, x.t()) if b is None else torch.addmm(b, w, x.t())
            return y.t().contiguous()
        return run_bsr
    if fmt == "scipy":
        import scipy.sparse as sp

        s = sp.csr_matrix((values.numpy(), col.numpy().astype(np.int32), crow.numpy().astype(np.int32)), shape=shape)
        bn = None if bias is None else bias.numpy()

        def run_scipy(x: torch.Tensor) -> torch.Tensor:
            xn = x.numpy()
            y = (s @ xn[0])[None, :] if xn.shape[0] == 1 else (s @ xn.T).T
            if bn is not None:
                y = y + bn
            return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
        return run_scipy
    if fmt == "kernel":
        lib = _kernel.load()
        if lib is None:
            raise UserError(f"the sparse C kernel is unavailable here ({_kernel.unavailable_reason()}); use format 'csr' or 'scipy'")
        panel = _kernel.PANEL
        n_panels = max(1, -(-in_f // panel))
        rows = np.repeat(np.arange(out_f, dtype=np.int64), np.diff(crow.numpy()))
        cols = col.numpy().astype(np.int64)
        pid = cols // panel
        order = np.argsort(pid, kind="stable")  # CSR is row-major: a stable sort by panel gives (panel, row, col)
        seg = pid[order] * out_f + rows[order]
        ptr_np = np.zeros(n_panels * out_f + 1, dtype=np.int64)
        np.cumsum(np.bincount(seg, minlength=n_panels * out_f), out=ptr_np[1:])
        ptr = torch.from_numpy(ptr_np)
        idx = torch.from_numpy((cols[order] - pid[order] * panel).astype(np.uint16).view(np.int16))
        val = torch.from_numpy(np.ascontiguousarray(values.numpy()[order]))
        del rows, cols, pid, order, seg
        bptr = 0 if bias is None else bias.contiguous()
        keep = (idx, ptr, val, bptr)  # the closure holds the arrays the raw pointers point into
        p_idx, p_ptr, p_val = idx.data_ptr(), ptr.data_ptr(), val.data_ptr()
        p_bias = None if bias is None else bptr.data_ptr()
        fn = lib.nnc_spmm_panel_u16

        def run_kernel(x: torch.Tensor) -> torch.Tensor:
            y = torch.empty(x.shape[0], out_f)
            fn(out_f, in_f, x.shape[0], panel, n_panels, p_ptr, p_idx, p_val, x.data_ptr(), p_bias, y.data_ptr())
            return y
        run_kernel.keep = keep  # type: ignore[attr-defined]  # alive as long as the executor is
        return run_kernel
    raise UserError(f"unknown sparse format {fmt!r}")


@_quiet
def csr_parts(weight2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow int64, col int64, values float32) of the non-zeros of a 2-D weight, row by row."""
    csr = weight2d.detach().to(torch.float32).contiguous().to_sparse_csr()
    return csr.crow_indices().to(torch.int64), csr.col_indices().to(torch.int64), csr.values().contiguous()


class _SparseBase(nn.Module):
    def _init_sparse(self, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                     bias: torch.Tensor | None, fmt: str) -> None:
        self.format = check_format(fmt)
        self.weight_shape = (int(shape[0]), int(shape[1]))
        self.register_buffer("crow_indices", crow.to(torch.int64).contiguous())
        self.register_buffer("col_indices", col.to(torch.int64).contiguous())
        self.register_buffer("values", values.detach().to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float32).contiguous().clone())
        if self.crow_indices.numel() != self.weight_shape[0] + 1 or self.col_indices.numel() != self.values.numel():
            raise UserError(f"CSR arrays do not fit a {list(self.weight_shape)} weight")
        self._run = _build_executor(self.format, self.crow_indices, self.col_indices, self.values, self.weight_shape, self.bias)
        self.eval()

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003 - torch's own signature
        """After loading (same nnz; torch refuses other shapes), rebuild the executor: it holds its own copies."""
        super()._load_from_state_dict(*args, **kwargs)
        self._run = _build_executor(self.format, self.crow_indices, self.col_indices, self.values, self.weight_shape, self.bias)

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / max(1, self.weight_shape[0] * self.weight_shape[1])

    @_quiet
    def dense_weight_2d(self) -> torch.Tensor:
        """The (out, in·k·k) weight as a dense tensor (for checks; the layer itself never builds it)."""
        return torch.sparse_csr_tensor(self.crow_indices, self.col_indices, self.values, self.weight_shape).to_dense()


class SparseLinear(_SparseBase):
    """y = x Wᵀ + b with W kept in CSR form and multiplied by executor `format` (see module docstring)."""

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                 bias: torch.Tensor | None = None, format: str = "csr"):
        super().__init__()
        self.in_features, self.out_features = int(shape[1]), int(shape[0])
        self._init_sparse(crow, col, values, shape, bias, format)

    @classmethod
    def from_dense(cls, linear: nn.Linear, format: str = "csr") -> "SparseLinear":
        """From a (possibly masked) nn.Linear: its effective weight, i.e. weight·mask when it is parametrized."""
        w = linear.weight.detach()
        return cls(*csr_parts(w), tuple(w.shape), None if linear.bias is None else linear.bias.detach(), format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or x.requires_grad or x.dtype is not torch.float32 or not x.is_cpu:
            _inference_only(self, x)  # raises unless it is only requires_grad under no_grad
        if x.dim() == 2 and x.is_contiguous():  # the common case, without reshapes: small layers are all overhead
            return self._run(x)
        lead = x.shape[:-1]
        y = self._run(x.reshape(-1, self.in_features).contiguous())
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, format={self.format}, sparsity={self.sparsity:.3f}"


class SparseConv2d(_SparseBase):
    """A Conv2d (groups=1, zero padding) run as im2col (`F.unfold`) times the sparse (out, in·kh·kw) weight.

    The unfolded input has one column per output pixel, so the sparse product runs with batch N·H_out·W_out:
    the weight is read once per pixel, and the unfold itself costs memory traffic a dense conv (which
    never unfolds explicitly on the oneDNN path) does not pay. Whether this ever wins is measured per layer.
    """

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, out_channels: int, in_channels: int,
                 kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                 bias: torch.Tensor | None = None, format: str = "csr"):
        super().__init__()
        self.out_channels, self.in_channels = int(out_channels), int(in_channels)
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        k = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_sparse(crow, col, values, (self.out_channels, k), bias, format)

    @staticmethod
    def supports(conv: nn.Conv2d) -> str | None:
        """None when `conv` can run sparse, else why not."""
        if conv.groups != 1:
            return f"groups={conv.groups} (only groups=1 runs as one sparse matmul)"
        if conv.padding_mode != "zeros":
            return f"padding_mode={conv.padding_mode!r} (only zero padding)"
        if isinstance(conv.padding, str):
            return f"padding={conv.padding!r} (only explicit padding)"
        return None

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, format: str = "csr") -> "SparseConv2d":
        why = cls.supports(conv)
        if why is not None:
            raise UserError(f"Conv2d cannot run sparse: {why}")
        w = conv.weight.detach()
        return cls(*csr_parts(w.reshape(w.shape[0], -1)), w.shape[0], w.shape[1], tuple(w.shape[2:]), conv.stride,
                   conv.padding, conv.dilation, None if conv.bias is None else conv.bias.detach(), format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _inference_only(self, x)
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        y = self._run(cols.transpose(1, 2).reshape(n * oh * ow, -1).contiguous())  # (N·L, out)
        return y.reshape(n, oh * ow, self.out_channels).transpose(1, 2).reshape(n, self.out_channels, oh, ow)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, format={self.format}, sparsity={self.sparsity:.3f}")
