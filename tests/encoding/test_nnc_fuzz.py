"""Fuzzing .nnc files behind the checksum: only the project's errors, never a crash or a huge allocation.

Mutated copies of real files (LeNet-300-100 and LeNet-5, pruned and weight-shared) go through the
parser (`read_nnc` / `load_nnc`) and the model rebuild (`model_from_nnc` / `decompress_model`, what
`nncompress decompress` and `evaluate --nnc` call). With the CRC recomputed, every field check of
the parser is exercised; without it, the checksum must catch the damage.
"""
import collections
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

from nncompress.architectures import build_model
from nncompress.core import UserError
from nncompress.encoding import (
    CompressedModel,
    CorruptFileError,
    SharedTensor,
    code_lengths,
    decode,
    encode,
    load_nnc,
    read_nnc,
    save_nnc,
    write_nnc,
)
from nncompress.encoding.fuzzing import KINDS, field_map, mutate
from nncompress.export import compress_model, decompress_model, model_from_nnc
from nncompress.export import nnc as nnc_module
from nncompress.pruning import LevelPruner, finalize
from nncompress.sharing import share_weights


def _nnc(name: str, seed: int, **write_kw) -> bytes:
    torch.manual_seed(seed)
    net = build_model(name)
    LevelPruner(0.9).prune(net)
    finalize(net)
    share_weights(net, bits={"conv": 8, "linear": 5} if name == "lenet5" else 4)
    return write_nnc(compress_model(net, {"model": name, "in_shape": [1, 28, 28], "num_classes": 10}), **write_kw)


@pytest.fixture(scope="module")
def files():
    """Format v2 as written (Huffman and rANS streams mixed), v2 with every stream rANS, and v1 (Huffman only)."""
    out = {name: _nnc(name, i) for i, name in enumerate(("lenet300", "lenet5"))}
    out["lenet5_rans"] = _nnc("lenet5", 1, coder="rans")
    out["lenet300_v1"] = _nnc("lenet300", 0, version=1)
    return out


def _load(data: bytes):
    """The rebuild path: parse, then rebuild the model; returns the model."""
    return model_from_nnc(read_nnc(data))


def test_valid_files_rebuild(files):
    for name, data in files.items():
        net = _load(data)
        assert type(net).__name__.lower().startswith("lenet")
        assert field_map(data)[0]  # the mutator understands the file


@pytest.mark.parametrize("recompute_crc", [True, False])
def test_mutated_files_raise_only_project_errors(files, recompute_crc):
    rng = np.random.default_rng(12 if recompute_crc else 13)
    maps = {name: field_map(data) for name, data in files.items()}
    outcomes = collections.Counter()
    kinds = collections.Counter()
    n = 320 if recompute_crc else 80
    worst = 0.0
    for i in range(n):
        name = list(files)[i % len(files)]
        data, kind = mutate(files[name], rng, recompute_crc=recompute_crc, fields=maps[name])
        kinds[kind] += 1
        t0 = time.process_time()
        try:
            net = _load(data)
        except UserError as e:  # CorruptFileError is a UserError
            msg = str(e)
            assert "\n" not in msg and len(msg) < 500, msg
            outcomes["refused"] += 1
        else:  # what loads is a well-formed model with finite weights
            assert all(torch.isfinite(p).all() for p in net.state_dict().values() if p.is_floating_point())
            outcomes["loaded" if data != files[name] else "unchanged"] += 1  # (a byte overwritten by itself)
        worst = max(worst, time.process_time() - t0)
    assert worst < 1.0, f"a mutated file took {worst:.2f} CPU s"
    assert set(kinds) == set(KINDS)
    if recompute_crc:
        assert outcomes["refused"] > n // 2 and outcomes["loaded"] > 0  # harmless float/metadata changes still load
    else:
        assert outcomes["loaded"] == 0  # the checksum catches every blind mutation


def test_mutated_files_through_the_file_api(files, tmp_path):
    """load_nnc and decompress_model (what `nncompress decompress` calls) on files on disk."""
    rng = np.random.default_rng(14)
    path = tmp_path / "m.nnc"
    refused = 0
    for i in range(60):
        name = list(files)[i % len(files)]
        data, _ = mutate(files[name], rng, recompute_crc=True)
        path.write_bytes(data)
        try:
            load_nnc(path)
            decompress_model(path)
        except UserError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 20


def test_field_targeted_mutations_hit_every_field_kind(files):
    """Each kind of integer field set to each hostile value: counts, dims, lengths, widths, dtype codes,
    and (format v2) coder tags, rANS precisions, lane counts and byte counts."""
    seen = set()
    for data in (files["lenet5"], files["lenet5_rans"]):
        fields, _ = field_map(data)
        body = data[:-4]
        for f in fields:
            if f.fmt == "f" or f.kind in seen:
                continue
            seen.add(f.kind)
            top = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF, "Q": 2**64 - 1}[f.fmt]
            for value in (0, 1, 2, 7, 255, top // 2, top - 1, top):
                mutated = bytearray(body)
                struct.pack_into("<" + f.fmt, mutated, f.offset, value)
                try:
                    _load(bytes(mutated) + struct.pack("<I", zlib.crc32(mutated)))
                except UserError as e:
                    assert "\n" not in str(e)
    assert {"n_shared", "n_dense", "dim", "ndim", "k", "n_entries", "code_nbits", "n_gap_lengths", "dtype"} <= seen
    assert {"code_coder", "gap_coder", "code_rans_precision", "gap_rans_precision", "code_rans_lanes", "gap_rans_lanes",
            "code_rans_nbytes", "gap_rans_nbytes"} <= seen


# ------------------------------------------------------------ claims that used to allocate gigabytes
META = {"model": "lenet300", "in_shape": [1, 28, 28], "num_classes": 10}


def _real_build_forbidden(monkeypatch):
    """Fail the test if model_from_nnc builds a real model or densifies a tensor: it must refuse first."""
    real = nnc_module._build

    def guarded(name, in_shape, num_classes, meta=False):
        assert meta, "a real model was built from hostile metadata"
        return real(name, in_shape, num_classes, meta=True)

    monkeypatch.setattr(nnc_module, "_build", guarded)
    monkeypatch.setattr(SharedTensor, "to_dense", lambda self: pytest.fail("to_dense called on a hostile file"))


@pytest.mark.parametrize(
    "meta, shared_shape, match",
    [
        (META, (2**16, 2**15), "has shape \\[65536, 32768\\], model 'lenet300'.* expects \\[300, 784\\]"),
        ({**META, "in_shape": [1, 16384, 1024]}, (300, 784), "expects \\[300, 16777216\\]|beyond the"),
        ({**META, "num_classes": 100_000}, (300, 784), "missing|expects"),
        ({**META, "num_classes": 10**9}, (300, 784), "num_classes' must be an integer in 1..100000"),
        ({**META, "num_classes": 1e308}, (300, 784), "num_classes"),
        ({**META, "in_shape": [1, -28, 28]}, (300, 784), "in_shape"),
        ({**META, "in_shape": [1, 2**40, 1]}, (300, 784), "in_shape"),
        ({**META, "in_shape": "1,28,28"}, (300, 784), "in_shape"),
        ({**META, "model": "no_such_model"}, (300, 784), "cannot build"),
        ({**META, "model": "lenet5"}, (300, 784), "do not match model 'lenet5'"),
        ({"model": "lenet300"}, (300, 784), "in_shape"),
    ],
)
def test_hostile_metadata_and_shapes_are_refused_before_allocating(tmp_path, monkeypatch, meta, shared_shape, match):
    # a tiny file: one shared tensor with no stored entries, the rest of lenet300's tensors as zeros
    shapes = {"fc1.bias": (300,), "fc2.weight": (100, 300), "fc2.bias": (100,), "fc3.weight": (10, 100), "fc3.bias": (10,)}
    shared = {"fc1.weight": SharedTensor(shared_shape, np.zeros(1, np.float32), 1, np.zeros(0, np.int64), np.zeros(0, np.int64), 8)}
    cm = CompressedModel(meta, shared, {k: np.zeros(s, np.float32) for k, s in shapes.items()})
    path = save_nnc(tmp_path / "hostile.nnc", cm)
    assert path.stat().st_size < 200_000
    _real_build_forbidden(monkeypatch)
    tracemalloc.start()
    try:
        t0 = time.process_time()
        with pytest.raises(UserError, match=match) as info:
            decompress_model(path)
        assert time.process_time() - t0 < 1.0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(info.value)
    assert peak < 32 * 2**20, f"{peak} bytes allocated while refusing"


def test_a_model_far_larger_than_its_file_is_refused(tmp_path, monkeypatch):
    """A 7 KB file may not rebuild a model of billions of elements, even with consistent shapes."""
    meta = {**META, "in_shape": [1, 2048, 2048]}  # fc1: 300 x 4.2 M = 1.3 G elements (5 GB)
    shapes = {"fc1.weight": (300, 2048 * 2048), "fc2.weight": (100, 300), "fc3.weight": (10, 100)}
    shared = {k: SharedTensor(s, np.zeros(1, np.float32), 1, np.zeros(0, np.int64), np.zeros(0, np.int64), 8) for k, s in shapes.items()}
    dense = {"fc1.bias": np.zeros(300, np.float32), "fc2.bias": np.zeros(100, np.float32), "fc3.bias": np.zeros(10, np.float32)}
    path = save_nnc(tmp_path / "big.nnc", CompressedModel(meta, shared, dense))
    assert path.stat().st_size < 8_000
    _real_build_forbidden(monkeypatch)
    with pytest.raises(UserError, match="elements, beyond the .* such a file can hold"):
        decompress_model(path)


def test_dtype_mismatch_is_refused_not_reinterpreted(files):
    cm = read_nnc(files["lenet300"])
    cm.dense["fc1.bias"] = cm.dense["fc1.bias"].view(np.int32)  # same bytes, another dtype
    with pytest.raises(UserError, match="fc1.bias is stored as int32, model 'lenet300'.* expects float32"):
        model_from_nnc(read_nnc(write_nnc(cm)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_unless_allowed(files, value):
    cm = read_nnc(files["lenet5"])
    body = bytearray(files["lenet5"][:-4])
    fields, _ = field_map(files["lenet5"])
    for kind in ("codebook", "dense_f32"):
        f = next(f for f in fields if f.kind == kind)
        mutated = bytearray(body)
        struct.pack_into("<f", mutated, f.offset, value)
        data = bytes(mutated) + struct.pack("<I", zlib.crc32(mutated))
        with pytest.raises(CorruptFileError, match="NaN or infinite .*allow_nonfinite=True"):
            read_nnc(data)
        loaded = read_nnc(data, allow_nonfinite=True)  # the explicit opt-in still reads it
        assert len(loaded.shared) == len(cm.shared)
    cm.dense["fc1.bias"][0] = value
    with pytest.raises(UserError, match="NaN or infinite"):
        write_nnc(cm)  # and the writer never makes such a file


def test_metadata_must_be_strict_json(files):
    body = bytearray(files["lenet5"][:-4])
    _, (start, end) = field_map(files["lenet5"])
    raw = b'{"model": "lenet5", "in_shape": [1, 28, 28], "num_classes": Infinity}'
    mutated = body[:start] + raw + body[end:]
    struct.pack_into("<I", mutated, 8, len(raw))
    with pytest.raises(CorruptFileError, match="no NaN or Infinity"):
        read_nnc(bytes(mutated) + struct.pack("<I", zlib.crc32(mutated)))
    with pytest.raises(UserError, match="not JSON-serialisable"):
        write_nnc(CompressedModel({"x": float("nan")}))


def test_huffman_decoder_on_damaged_tables_and_streams():
    """Valid streams, then damaged: bad tables (Kraft, over-long), early ends, trailing bits, flips."""
    rng = np.random.default_rng(15)
    outcomes = collections.Counter()
    for _ in range(400):
        freqs = rng.integers(0, 20, size=int(rng.integers(2, 12)))
        freqs[0] += 1
        lengths = code_lengths(freqs)
        symbols = rng.choice(np.flatnonzero(freqs), size=int(rng.integers(1, 40)))
        data, nbits = encode(symbols, lengths)
        count = symbols.size
        damage = int(rng.integers(7))
        if damage == 1:  # a random table: Kraft violations, over-long codes, missing codes
            lengths = rng.integers(0, 27, size=lengths.size)
        elif damage == 2:  # the stream ends early
            nbits = int(rng.integers(0, nbits))
        elif damage == 3:  # trailing garbage
            data += rng.integers(0, 256, size=2, dtype=np.uint8).tobytes()
            nbits += int(rng.integers(1, 17))
        elif damage == 4:  # a flipped bit
            flipped = bytearray(data)
            bit = int(rng.integers(nbits))
            flipped[bit // 8] ^= 0x80 >> (bit % 8)
            data = bytes(flipped)
        elif damage == 5:
            count += int(rng.choice([-1, 1, 1000, 2**40]))
        elif damage == 6:
            nbits = int(rng.choice([nbits + 8 * len(data) + 1, 2**63]))
        try:
            out = decode(data, nbits, lengths, count)
        except CorruptFileError as e:
            assert "\n" not in str(e)
            outcomes["refused", damage] += 1
        else:
            assert out.shape == (count,) and lengths[out].min() > 0
            if damage == 0:
                assert np.array_equal(out, symbols)
            outcomes["decoded", damage] += 1
    assert outcomes["decoded", 0] > 30
    for damage in (2, 3, 5, 6):  # provably invalid: fewer bits, extra bits, wrong count, bits not there
        assert outcomes["decoded", damage] == 0 and outcomes["refused", damage] > 20
    assert outcomes["refused", 1] > 20 and outcomes["refused", 4] > 0
