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
from nncompress.core.ties import tied_groups  # noqa: E402
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


# --- the encoder: a BERT-style masked LM on the same corpus and tokenizer ------------------------------------------

@dataclass(frozen=True)
class EncoderConfig:
    n_layer: int = 4
    hidden: int = 256
    heads: int = 8
    intermediate: int = 1024
    train_tokens: int = 250_000
    batch_size: int = 16
    lr: float = 1e-3
    mask_prob: float = 0.15
    seed: int = 0

    def key(self, decoder: TestbedConfig) -> str:
        return hashlib.sha256(json.dumps([asdict(self), asdict(decoder)], sort_keys=True).encode()).hexdigest()[:12]


QUICK_ENCODER = EncoderConfig(n_layer=2, hidden=64, heads=4, intermediate=128, train_tokens=20_000, batch_size=8)


class MaskedBlocks(torch.utils.data.Dataset):
    """BERT's masking (Devlin et al. 2019): 15 % of positions are targets; of those 80 % become [MASK], 10 % a
    random token, 10 % stay. Deterministic per (seed, index), so every epoch and every run sees the same masks."""

    def __init__(self, blocks: TokenBlocks, mask_id: int, vocab: int, prob: float, seed: int):
        self.blocks, self.mask_id, self.vocab, self.prob, self.seed = blocks, mask_id, vocab, prob, seed

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.blocks[i]["input_ids"].clone()
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        target = torch.rand(ids.shape, generator=g) < self.prob
        labels = torch.where(target, ids, torch.full_like(ids, -100))
        roll = torch.rand(ids.shape, generator=g)
        ids[target & (roll < 0.8)] = self.mask_id
        swap = target & (roll >= 0.8) & (roll < 0.9)
        ids[swap] = torch.randint(0, self.vocab, (int(swap.sum()),), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@torch.no_grad()
def masked_perplexity(model: torch.nn.Module, data: MaskedBlocks, max_blocks: int = 128, batch_size: int = 16) -> float:
    """exp(mean cross-entropy over the masked target positions) — the MLM's perplexity."""
    model.eval()
    total, count = 0.0, 0
    n = min(len(data), max_blocks)
    for start in range(0, n, batch_size):
        items = [data[i] for i in range(start, min(n, start + batch_size))]
        batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels != -100).sum())
    return float(np.exp(total / max(count, 1)))


def build_encoder(bed: Testbed, cfg: EncoderConfig = EncoderConfig(), quick: bool = False, log=print):
    """(BertForMaskedLM trained on the testbed's training split with its tokenizer, {split: MaskedBlocks}, info)."""
    import transformers
    from safetensors.torch import load_file, save_file

    tokenizer = bed.tokenizer
    mask_id = tokenizer.token_to_id("<|endoftext|>")  # the BPE's one special token doubles as [MASK]
    config = transformers.BertConfig(vocab_size=bed.cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.n_layer,
                                     num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                                     max_position_embeddings=bed.cfg.seq_len, pad_token_id=mask_id)
    torch.manual_seed(cfg.seed)
    model = transformers.BertForMaskedLM(config)
    splits = {s: MaskedBlocks(b, mask_id, bed.cfg.vocab_size, cfg.mask_prob, cfg.seed + k)
              for k, (s, b) in enumerate(bed.splits.items())}
    folder = CACHE / (("quick-" if quick else "") + "encoder-" + cfg.key(bed.cfg))
    weights, info_file = folder / "model.safetensors", folder / "encoder.json"
    if weights.is_file() and info_file.is_file():
        model.load_state_dict(load_file(str(weights)), strict=False)
        model.tie_weights()
        return model.eval(), splits, json.loads(info_file.read_text())
    g = torch.Generator().manual_seed(cfg.seed)
    n_blocks = min(len(splits["train"]), cfg.train_tokens // bed.cfg.seq_len)
    subset = torch.utils.data.Subset(splits["train"], torch.randperm(len(splits["train"]), generator=g)[:n_blocks].tolist())
    loader = torch.utils.data.DataLoader(subset, batch_size=cfg.batch_size, shuffle=True, generator=g, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    log(f"training the testbed MLM encoder ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params) on {n_blocks * bed.cfg.seq_len:,} tokens")
    t0 = time.perf_counter()
    train(model, loader, TrainConfig(epochs=1, lr=cfg.lr, seed=cfg.seed, device="cpu", progress=True), optimizer=optimizer)
    info = {"config": asdict(cfg), "params": sum(p.numel() for p in model.parameters()), "train_seconds": round(time.perf_counter() - t0, 1),
            "validation_mlm_ppl": masked_perplexity(model, splits["validation"]), "test_mlm_ppl": masked_perplexity(model, splits["test"])}
    folder.mkdir(parents=True, exist_ok=True)
    tied = {n for group in tied_groups(model) for n in group[1:]}  # a tied tensor is stored once
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}, str(weights.with_suffix(".tmp")))
    weights.with_suffix(".tmp").replace(weights)
    info_file.write_text(json.dumps(info, indent=1))
    return model.eval(), splits, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    bed = build(QUICK if args.quick else TestbedConfig(), quick=args.quick)
    print(json.dumps(bed.info, indent=1))
    _, _, info = build_encoder(bed, QUICK_ENCODER if args.quick else EncoderConfig(), quick=args.quick)
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
