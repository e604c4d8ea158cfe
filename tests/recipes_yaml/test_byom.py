"""Bring your own model: a Hugging Face-style transformer encoder, built here (no download), compressed through
the Python API: its linear layers pruned by a recipe (with KD), quantized, factorized; outputs compared."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncompress.data import load_dataset
from nncompress.lowrank import factorize
from nncompress.quantization import quantize_dynamic
from nncompress.recipes.runner import run_recipe
from nncompress.training import TrainConfig, evaluate, train


class SelfAttention(nn.Module):
    """BERT's naming: attention.self.{query,key,value}, attention.output.dense."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        return (att @ v).transpose(1, 2).reshape(b, t, d)


class EncoderLayer(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, ff: int = 64):
        super().__init__()
        self.attention = nn.ModuleDict({"self": SelfAttention(d, heads), "output": nn.Linear(d, d)})
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.intermediate, self.output = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        x = self.ln1(x + self.attention["output"](self.attention["self"](x)))
        return self.ln2(x + self.output(F.gelu(self.intermediate(x))))


class Encoder(nn.Module):
    """An 8×8 image read as 8 tokens of 8 features; 2 encoder layers; mean-pooled classifier head."""

    def __init__(self, d: int = 32, layers: int = 2, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.pos = nn.Parameter(torch.zeros(1, 8, d))
        self.layers = nn.ModuleList(EncoderLayer(d) for _ in range(layers))
        self.classifier = nn.Linear(d, classes)

    def forward(self, x):
        h = self.embed(x.view(x.shape[0], 8, 8)) + self.pos
        for layer in self.layers:
            h = layer(h)
        return self.classifier(h.mean(1))


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = load_dataset("digits").subset(512, 256)
    net = Encoder()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ds.x_train, ds.y_train), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    train(net, loader, TrainConfig(epochs=6, lr=0.003, optimizer="adam", progress=False))  # the user's own training
    return net.eval(), ds


def cosine(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.cosine_similarity(a.eval()(x), b.eval()(x), dim=1).mean())


def test_prune_linear_layers_with_a_recipe(trained):
    net, ds = trained
    recipe = {"name": "byom", "training": {"epochs": 3, "lr": 0.001, "optimizer": "adam"},
              "policies": [{"method": "agp", "final_sparsity": 0.5, "start": 0, "end": 2}, {"method": "distill", "start": 0}]}
    r = run_recipe(recipe, model=net, dataset=ds, progress=False)
    linears = {n: m for n, m in r.model.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 2 + 2 * 6  # embed, classifier, and q/k/v/out/intermediate/output per layer
    for name, m in linears.items():
        assert float((m.weight == 0).float().mean()) == pytest.approx(0.5, abs=1 / m.weight.numel()), name
    assert not any(float((m.weight == 0).float().mean()) > 0 for m in net.modules() if isinstance(m, nn.Linear))  # user's model untouched
    assert r.top1_final > r.top1_pretrained - 10 and cosine(net, r.model, ds.x_test) > 0.8


def test_quantize_and_factorize_the_encoder(trained):
    net, ds = trained
    test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ds.x_test, ds.y_test), batch_size=256)
    base = evaluate(net, test_loader)
    with pytest.warns(UserWarning, match="LayerNorm"):  # LayerNorm stays float, and says so
        q = quantize_dynamic(net, ds.x_test[:8], bits=8)
    assert cosine(net, q, ds.x_test) > 0.99  # int8 linear layers barely move the logits

    f = copy.deepcopy(net)
    blocks = [n for n, m in net.named_modules() if isinstance(m, nn.Linear) and n.startswith("layers.")]
    rep = factorize(f, "svd", ratio=1.5, layers=blocks)  # encoder Linears to rank r, r·(m+n) ≈ m·n / 1.5; embed/head dense
    params = lambda m: sum(p.numel() for p in m.parameters())
    assert len(blocks) == 12 and all(lf.skipped is None for lf in rep.layers) and params(f) < 0.8 * params(net)
    before_ft, top1_before_ft = cosine(net, f, ds.x_test), evaluate(f, test_loader)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(ds.x_train, ds.y_train), batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    train(f, loader, TrainConfig(epochs=3, lr=0.003, optimizer="adam", progress=False))  # the user's fine-tuning
    assert before_ft > 0.9  # the factorized encoder's logits point where the dense one's do
    assert evaluate(f, test_loader) > max(top1_before_ft, base - 5)  # and fine-tuning wins back the accuracy
