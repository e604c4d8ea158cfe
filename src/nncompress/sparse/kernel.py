"""A small hand-written CSR × dense kernel, compiled on first use with the system C compiler and called via ctypes.

Why a kernel of our own: at batch 1 a fully connected layer is a matrix-vector product, bound by how many
bytes of weight stream from memory. Dense fp32 moves 4 bytes per weight; `torch.sparse` CSR (int32 indices,
MKL) and scipy CSR move 8 bytes per *kept* weight and loop over them with one dependent accumulator. This
kernel cuts the weight into column panels (see PANEL) so the part of x it gathers from stays in L1, stores
column indices as uint16 relative to the panel, so a kept weight costs 6 bytes, and sums each row in 8
independent lanes that the compiler turns into one AVX gather + FMA. The summation order is fixed (lanes, then a fixed tree), so results are deterministic.

`nnc_mlp_forward` runs a whole MLP (Linear + optional ReLU per layer) through the same per-layer loop in one call, one
sample at a time, hidden activations in a small scratch buffer: at batch 1 a LeNet-sized layer takes a few
microseconds, as long as calling it from Python, so the chain is fused (`nncompress.sparse.mlp`).

The kernel is single-threaded: at batch 1 one core already saturates what it can stream. With `threads > 1`
torch's CSR (MKL, multi-threaded) may win instead, and `sparsify` measures that rather than assuming.

The kernel is optional: when no C compiler is found or compilation fails, `load()` returns None, the reason
is kept in `unavailable_reason()`, and `sparsify` simply does not offer the "kernel" format. The shared
object is cached under ``$NNCOMPRESS_CACHE`` (default ``~/.cache/nncompress``), keyed by the source, the flags
and the CPU, because ``-march=native`` code must never run on another CPU.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

PANEL = 2048
"""Columns per panel: the kernel walks the weight one 2048-column panel at a time, so the slice of x it gathers
from (8 KB of fp32) stays in L1 while values and indices stream past. Without panels, VGG16 fc6's 25,088-float
input (100 KB) spills to L2 and every gather waits on it: on the benchmark CPU (32 KB L1d) fc6 at 90 % sparsity
ran 2.9x faster than dense unpanelled, and 512/1024/2048/4096-column panels gave 4.5x/5.8x/6.9x/4.9x. A column
index relative to its panel always fits in uint16, so a kept weight costs 6 bytes (4 value + 2 index)."""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
/* y[b, r] = bias[r] + sum over panels p of sum_j val[j] * x[b, p*panel + idx[j]], j in indptr[p*out_f + r] .. [+1].
   x is (batch, in_f), y (batch, out_f); entries are stored panel-major, then row-major, columns relative to the panel. */
/* One sample through one panel-CSR layer (then ReLU where asked): the unit both entry points below share. */
static void nnc_layer_1(int64_t out_f, int64_t in_f, int64_t panel, const int64_t* indptr, const uint16_t* idx,
                        const float* val, const float* bias, int64_t relu, const float* xb, float* yb) {
  int64_t n_panels = in_f > 0 ? (in_f + panel - 1) / panel : 1;
  for (int64_t r = 0; r < out_f; ++r) yb[r] = bias ? bias[r] : 0.0f;
  for (int64_t p = 0; p < n_panels; ++p) {
    const float* xp = xb + p * panel;
    const int64_t* ip = indptr + p * out_f;
    for (int64_t r = 0; r < out_f; ++r) {
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t j = ip[r], end = ip[r + 1];
      for (; j + 8 <= end; j += 8) {
        for (int k = 0; k < 8; ++k) acc[k] += val[j + k] * xp[idx[j + k]];
      }
      float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
      for (; j < end; ++j) s += val[j] * xp[idx[j]];
      yb[r] += s;
    }
  }
  if (relu) for (int64_t r = 0; r < out_f; ++r) yb[r] = yb[r] > 0.0f ? yb[r] : 0.0f;
}

void nnc_spmm_panel_u16(int64_t out_f, int64_t in_f, int64_t batch, int64_t panel, int64_t n_panels,
                        const int64_t* indptr, const uint16_t* idx, const float* val,
                        const float* x, const float* bias, float* y) {
  (void)n_panels;  /* = ceil(in_f / panel), recomputed by nnc_layer_1 */
  for (int64_t b = 0; b < batch; ++b) nnc_layer_1(out_f, in_f, panel, indptr, idx, val, bias, 0, x + b * in_f, y + b * out_f);
}

/* A whole MLP in one call (nncompress.sparse.mlp): layer l maps dims[l] -> dims[l + 1] with the panel CSR
   arrays above, then ReLU where relu[l]; one sample at a time, hidden activations in a two-slot scratch buffer. */
typedef struct {
  int64_t n_layers, panel, max_dim;
  const int64_t* dims;
  const int64_t* relu;
  const int64_t* const* indptr;
  const uint16_t* const* idx;
  const float* const* val;
  const float* const* bias;
} nnc_mlp;


int nnc_mlp_forward(const nnc_mlp* m, int64_t batch, const float* x, float* y) {
  float* scratch = (float*)malloc(sizeof(float) * 2 * (size_t)(m->max_dim > 0 ? m->max_dim : 1));
  if (!scratch) return 1;
  const int64_t n = m->n_layers, in0 = m->dims[0], outn = m->dims[n];
  for (int64_t b = 0; b < batch; ++b) {
    const float* in = x + b * in0;
    for (int64_t l = 0; l < n; ++l) {
      float* out = (l == n - 1) ? y + b * outn : scratch + (l % 2) * m->max_dim;
      nnc_layer_1(m->dims[l + 1], m->dims[l], m->panel, m->indptr[l], m->idx[l], m->val[l], m->bias[l], m->relu[l], in, out);
      in = out;
    }
  }
  free(scratch);
  return 0;
}
"""

FLAG_SETS = (("-O3", "-march=native"), ("-O3",))
"""Tried in order: native vector code first, portable code if the compiler refuses -march=native."""

_lib: ctypes.CDLL | None = None
_reason: str | None = None
_tried = False


def _cpu_key() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags")][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("NNCOMPRESS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nncompress")
    return Path(root) / "kernels"


def _compile(cc: str, flags: tuple[str, ...]) -> Path:
    key = hashlib.sha256("\0".join([SOURCE, cc, *flags, _cpu_key()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"spmm_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "spmm.c"
        src.write_text(SOURCE)
        out = Path(tmp) / "spmm.so"
        subprocess.run([cc, *flags, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
        staged = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(out, staged)
        os.replace(staged, target)  # atomic: concurrent processes never load a half-written file
    return target


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here (see `unavailable_reason`)."""
    global _lib, _reason, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("NNCOMPRESS_NO_KERNEL"):
        _reason = "disabled by NNCOMPRESS_NO_KERNEL"
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        _reason = "no C compiler (cc/gcc/clang) on PATH"
        return None
    errors = []
    for flags in FLAG_SETS:
        try:
            lib = ctypes.CDLL(str(_compile(cc, flags)))
        except (OSError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            errors.append(f"{' '.join(flags)}: {type(e).__name__} {detail[:200].decode(errors='replace').strip()}")
            continue
        p, i = ctypes.c_void_p, ctypes.c_int64
        lib.nnc_spmm_panel_u16.argtypes = [i, i, i, i, i, p, p, p, p, p, p]
        lib.nnc_spmm_panel_u16.restype = None
        lib.nnc_mlp_forward.argtypes = [p, i, p, p]
        lib.nnc_mlp_forward.restype = ctypes.c_int
        _lib = lib
        return lib
    _reason = "compilation failed: " + "; ".join(errors)
    return None


def unavailable_reason() -> str | None:
    """Why `load()` returned None (None when the kernel is available or was not tried yet)."""
    return _reason
