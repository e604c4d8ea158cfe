"""k-means weight sharing on a GPU: clustering runs on the host (numpy) and the codebook goes back beside the
weight; centroid fine-tuning keeps ≤ 2^bits values per layer and the pruned zeros. Skipped without CUDA."""
import pytest
import torch

from nncompress.architectures import build_model
from nncompress.data import load_dataset, make_loaders
from nncompress.pruning import LevelPruner
from nncompress.sharing import finalize_sharing, get_codebook, share_weights
from nncompress.training import TrainConfig, evaluate, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pruned_model(device: str):
    torch.manual_seed(0)
    ds = load_dataset("digits").subset(512, 200)
    loaders = make_loaders(ds, batch_size=32)
    model = build_model("lenet300", ds.input_shape, ds.num_classes)
    train(model, loaders[0], TrainConfig(epochs=4, lr=0.05, device="cpu", progress=False))
    model.to(device)
    LevelPruner(0.7).prune(model)
    return model, loaders


@pytest.mark.parametrize("home", ["cuda", "cpu"])  # shared on the GPU, or shared on the CPU and fine-tuned on the GPU
def test_kmeans_sharing_fine_tunes_on_cuda(home):
    model, (train_loader, test_loader) = _pruned_model(home)
    share_weights(model, bits=3)
    shared_top1 = evaluate(model, test_loader)
    before = {n: get_codebook(m) for n, m in model.named_modules() if n in ("fc1", "fc2", "fc3")}
    assert all(t.device.type == home for c in before.values() for t in c)
    start = {n: c[0].clone() for n, c in before.items()}
    train(model, train_loader, TrainConfig(epochs=2, lr=0.01, device="cuda", progress=False))
    for name, (centroids, codes, mask) in ((n, get_codebook(model.get_submodule(n))) for n in before):
        assert centroids.device.type == codes.device.type == home  # handed back where it came from
        assert centroids.numel() <= 2**3 and not torch.equal(centroids, start[name])  # the centroids trained
        w = model.get_submodule(name).weight.detach()
        assert bool((w[~mask] == 0).all())  # pruned weights stay exactly zero
        assert len(torch.unique(w[mask])) <= 2**3
    assert evaluate(model, test_loader) >= min(shared_top1, 80.0)
    finalize_sharing(model)
    assert model.fc1.weight.device.type == home
