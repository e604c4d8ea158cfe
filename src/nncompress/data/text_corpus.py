"""An offline language-modelling corpus every machine has: the Python standard library's own sources.

Every figure for a language-model method (GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT, head pruning, KD) needs
text that no one here wrote, that is the same on every machine with the same Python, and that needs no
download: the `.py` files of the standard library (≈ 1,800 files, ≈ 31 MB on CPython 3.11) and its bundled
`.txt` files. The split is **by file** and decided by a hash of the file's path relative to the library root
(so adding or removing one file never moves another between splits), seeded: about 90 % train, 5 %
validation, 5 % test. Test files are never used for calibration, tuning or tokenizer training.

The tokenizer is a byte-level BPE trained with Hugging Face `tokenizers` on the training files only (a few
seconds); byte-level means no unknown tokens on any file. Token streams are cut into fixed-length blocks for
causal-LM training and perplexity (each block is scored on its own, no overlap: a conservative perplexity).
`tokenizers` is part of the `hf` extra.
"""
from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nncompress.core.errors import UserError

SPLITS = ("train", "validation", "test")
_EXCLUDED_PARTS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _split_of(relative: str, seed: int, fractions: tuple[float, float, float]) -> str:
    h = int.from_bytes(hashlib.sha256(f"{seed}:{relative}".encode()).digest()[:8], "big") / 2**64
    if h < fractions[0]:
        return "train"
    return "validation" if h < fractions[0] + fractions[1] else "test"


def corpus_files(split: str, seed: int = 0, fractions: tuple[float, float, float] = (0.9, 0.05, 0.05),
                 root: Path | None = None) -> list[Path]:
    """The standard-library files (`.py` and bundled `.txt`) of one split, sorted by relative path."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise UserError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    root = root or stdlib_root()
    if not root.is_dir():
        raise UserError(f"{root}: the Python standard library folder is missing; this corpus needs a CPython install")
    files = []
    for pattern in ("*.py", "*.txt"):
        for p in root.rglob(pattern):
            rel = p.relative_to(root)
            if _EXCLUDED_PARTS & set(rel.parts) or not p.is_file():
                continue
            if _split_of(rel.as_posix(), seed, fractions) == split:
                files.append(p)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise UserError(f"the '{split}' split of {root} is empty")
    return files


def read_texts(files: list[Path]) -> list[str]:
    """File contents as text (undecodable bytes replaced, so every file reads)."""
    return [p.read_bytes().decode("utf-8", errors="replace") for p in files]


def _tokenizers():
    try:
        import tokenizers
    except ImportError as exc:  # the hf extra
        raise UserError("the text corpus needs the `tokenizers` package: pip install 'nncompress[hf]'") from exc
    return tokenizers


def train_tokenizer(texts: list[str], vocab_size: int = 8192, seed: int = 0):
    """A byte-level BPE (`tokenizers.Tokenizer`) trained on `texts`; deterministic for the same texts."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 300 <= vocab_size <= 1_000_000:
        raise UserError(f"vocab_size must be an integer in [300, 1e6] (byte-level BPE starts from 256 bytes), got {vocab_size!r}")
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                     initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
                                     special_tokens=["<|endoftext|>"])
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def load_tokenizer(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no tokenizer file; train one with train_tokenizer")
    return _tokenizers().Tokenizer.from_file(str(path))


def encode_files(tokenizer, texts: list[str]) -> np.ndarray:
    """One int32 token stream: each file's tokens followed by the end-of-text token."""
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids = []
    for enc in tokenizer.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eot)
    return np.asarray(ids, dtype=np.int32)


@dataclass
class TokenBlocks(torch.utils.data.Dataset):
    """Non-overlapping blocks of `seq_len` tokens as HF causal-LM batches: {input_ids, labels} (labels = inputs;
    the model shifts them)."""

    tokens: np.ndarray
    seq_len: int

    def __post_init__(self) -> None:
        if isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise UserError(f"seq_len must be an integer ≥ 2, got {self.seq_len!r}")
        if len(self.tokens) < self.seq_len:
            raise UserError(f"{len(self.tokens)} tokens are fewer than one block of {self.seq_len}")

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        block = torch.from_numpy(self.tokens[i * self.seq_len:(i + 1) * self.seq_len].astype(np.int64))
        return {"input_ids": block, "labels": block}


@torch.no_grad()
def perplexity(model: torch.nn.Module, blocks: TokenBlocks, batch_size: int = 8, max_blocks: int | None = None,
               forward_fn=None) -> float:
    """exp(mean next-token cross-entropy) over the blocks (first `max_blocks`), each block scored alone.

    The model is called as `model(input_ids=...)` and must return logits (B, T, V) or an object with `.logits`;
    the mean is over every predicted token (T − 1 per block), not over blocks.
    """
    from nncompress.core.model_io import logits_of

    n = len(blocks) if max_blocks is None else min(len(blocks), max_blocks)
    if n <= 0:
        raise UserError("perplexity needs at least one block")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, n, batch_size):
            ids = torch.stack([blocks[i]["input_ids"] for i in range(start, min(n, start + batch_size))]).to(device)
            out = forward_fn(model, ids) if forward_fn is not None else model(input_ids=ids)
            logits = logits_of(out).float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                     reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    ppl = float(np.exp(total / count))
    if not np.isfinite(ppl):
        raise UserError(f"perplexity is {ppl}: the model's logits are not finite")
    return ppl
