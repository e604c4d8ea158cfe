"""The language-model testbed: a GPT-2-architecture causal LM trained on the Python standard library's sources.

Built once and cached (safetensors + config + tokenizer + token arrays) under ~/.cache/nncompress/llm_testbed/;
rebuilt when missing or when the settings below change (the cache key hashes them). Trained by nncompress's own
`train` loop (AdamW, cosine schedule) for a fixed token budget on 2 CPU threads. The corpus and its split are
`nncompress.data.text_corpus` (split by file; test files never used for training, calibration or tuning).

    python benchmarks/llm_testbed.py            # build (or load) and print validation/test perplexity
    python benchmarks/llm_testbed.py --quick    # a tiny model on a slice, to check the plumbing
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nncompress.data.text_corpus import (  # noqa: E402
    TokenBlocks,
    corpus_files,
    encode_files,
    load_tokenizer,
    perplexity,
    read_texts,
    train_tokenizer,
)
from nncompress.training import TrainConfig, train  # noqa: E402

CACHE = Path.home() / ".cache" / "nncompress" / "llm_testbed"


@dataclass(frozen=True)
class TestbedConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    seq_len: int = 128
    train_tokens: int = 2_000_000   # the token budget of the single pass over a seeded subset of training blocks
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


QUICK = TestbedConfig(vocab_size=512, n_layer=2, n_embd=64, n_head=4, seq_len=64, train_tokens=40_000, batch_size=8)


def gpt2(cfg: TestbedConfig):
    import transformers

    config = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_head=cfg.n_head,
                                     n_positions=cfg.seq_len, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(cfg.seed)
    return transformers.GPT2LMHeadModel(config)


@dataclass
class Testbed:
    cfg: TestbedConfig
    model: torch.nn.Module
    tokenizer: object
    splits: dict[str, TokenBlocks]
    info: dict


def _tokens(cfg: TestbedConfig, folder: Path, quick: bool) -> tuple[object, dict[str, np.ndarray]]:
    tok_file, arrays = folder / "tokenizer.json", folder / "tokens.npz"
    if tok_file.is_file() and arrays.is_file():
        with np.load(arrays, allow_pickle=False) as z:
            return load_tokenizer(tok_file), {k: z[k] for k in z.files}
    texts = {s: read_texts(corpus_files(s, seed=cfg.seed)) for s in ("train", "validation", "test")}
    if quick:
        texts = {s: t[:40] for s, t in texts.items()}
    tokenizer = train_tokenizer(texts["train"], cfg.vocab_size, cfg.seed)
    streams = {s: encode_files(tokenizer, t) for s, t in texts.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(tok_file))
    tmp = arrays.with_suffix(".tmp.npz")
    np.savez(tmp, **streams)
    tmp.replace(arrays)
    return tokenizer, streams


def build(cfg: TestbedConfig = TestbedConfig(), quick: bool = False, log=print) -> Testbed:
    """Load the cached testbed for `cfg`, training it first when the cache is missing."""
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(cfg.threads)
    folder = CACHE / (("quick-" if quick else "") + cfg.key())
    t0 = time.perf_counter()
    tokenizer, streams = _tokens(cfg, folder, quick)
    splits = {s: TokenBlocks(a, cfg.seq_len) for s, a in streams.items()}
    model = gpt2(cfg)
    weights, info_file = folder / "model.safetensors", folder / "testbed.json"
    if weights.is_file() and info_file.is_file():
        model.load_state_dict(load_file(str(weights)), strict=False)
        model.tie_weights()
        return Testbed(cfg, model.eval(), tokenizer, splits, json.loads(info_file.read_text()))
    g = torch.Generator().manual_seed(cfg.seed)
    n_blocks = min(len(splits["train"]), cfg.train_tokens // cfg.seq_len)
    subset = torch.utils.data.Subset(splits["train"], torch.randperm(len(splits["train"]), generator=g)[:n_blocks].tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    log(f"training the testbed LM ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) on "
        f"{n_blocks * cfg.seq_len:,} tokens, {cfg.threads} threads")
    t1 = time.perf_counter()
    history = train(model, loader, TrainConfig(epochs=1, lr=cfg.lr, seed=cfg.seed, device="cpu", progress=True),
                    optimizer=optimizer)
    train_s = time.perf_counter() - t1
    model.eval()
    info = {"config": asdict(cfg), "params": sum(p.numel() for p in model.parameters()),
            "train_tokens": n_blocks * cfg.seq_len, "train_seconds": round(train_s, 1),
            "train_tokens_per_s": round(n_blocks * cfg.seq_len / train_s, 1),
            "final_train_loss": history[-1].get("loss") if history else None,
            "tokens": {s: int(len(a)) for s, a in streams.items()},
            "files": {s: len(corpus_files(s, seed=cfg.seed)) for s in ("train", "validation", "test")},
            "validation_ppl": perplexity(model, splits["validation"], max_blocks=256),
            "test_ppl": perplexity(model, splits["test"], max_blocks=256),
            "python": sys.version.split()[0], "build_seconds": round(time.perf_counter() - t0, 1)}
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(weights)
    info_file.write_text(json.dumps(info, indent=1))
    return Testbed(cfg, model, tokenizer, splits, info)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    bed = build(QUICK if args.quick else TestbedConfig(), quick=args.quick)
    print(json.dumps(bed.info, indent=1))


if __name__ == "__main__":
    main()
