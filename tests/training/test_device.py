"""Device handling: which device and backend a spec picks, CPU numerics unchanged, and the GPU path (skip-guarded).

The CUDA branches of resolve_device / init_distributed are checked here without a GPU by faking what
torch.cuda reports; the two tests at the end run real CUDA (and nccl) on machines that have it.
"""
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.data import load_dataset, make_loaders
from nncompress.distillation import DistillationCallback
from nncompress.training import (
    Callback,
    TrainConfig,
    distributed,
    evaluate,
    predict,
    train,
)
from nncompress.training.device import default_backend, module_device, resolve_device
from nncompress.training.masking import MaskCallback, magnitude_masks

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend torch sees `n` GPUs (no CUDA call is made: torch.device('cuda', i) is only a name)."""
    def set_count(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_count


# ------------------------------------------------------------------------------------------ resolve_device
def test_auto_is_cpu_without_cuda_and_cpu_is_always_cpu(fake_gpus):
    fake_gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    fake_gpus(2)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_and_bare_cuda_mean_this_ranks_gpu(fake_gpus, monkeypatch):
    fake_gpus(4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")  # torchrun's fourth process on this node
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index wins over LOCAL_RANK
    assert resolve_device(torch.device("cuda", 2)) == torch.device("cuda", 2)


def test_more_ranks_or_a_higher_index_than_gpus_is_a_user_error(fake_gpus, monkeypatch):
    fake_gpus(2)
    with pytest.raises(UserError, match=r"cuda:2 requested but only 2 GPU\(s\)"):
        resolve_device("cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match=r"only 2 GPU\(s\) are visible: start at most one process per GPU"):
        resolve_device("auto")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1", torch.device("cuda")])
def test_cuda_without_a_gpu_is_a_one_line_user_error(fake_gpus, spec):
    fake_gpus(0)
    with pytest.raises(UserError, match="no CUDA / no GPU visible: use --device cpu") as e:
        resolve_device(spec)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["gpu", "", "cuda:", "cpu:1", "auto:0", "cuda:-1", "mps", "cuda0"])
def test_unknown_specs_name_the_accepted_values(spec):
    with pytest.raises(UserError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_backend_follows_the_device():
    assert default_backend(torch.device("cuda", 1)) == "nccl"
    assert default_backend(torch.device("cpu")) == "gloo"


# -------------------------------------------------------------------------------------- init_distributed
@pytest.fixture
def fake_group(monkeypatch):
    """Record what init_distributed would do under torchrun (WORLD_SIZE=2) without starting a process group."""
    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.__setitem__("backend", backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.__setitem__("set_device", torch.device(d)))
    return calls


def test_init_distributed_picks_nccl_and_binds_the_rank_to_its_gpu(fake_group, fake_gpus, monkeypatch):
    fake_gpus(2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    distributed.init_distributed()
    assert fake_group == {"backend": "nccl", "set_device": torch.device("cuda", 1)}


def test_init_distributed_uses_gloo_on_cpu_even_with_gpus_present(fake_group, fake_gpus):
    fake_gpus(2)
    distributed.init_distributed(device="cpu")
    assert fake_group == {"backend": "gloo"}
    fake_gpus(0)
    distributed.init_distributed()
    assert fake_group == {"backend": "gloo"}


def test_init_distributed_keeps_an_explicit_backend(fake_group, fake_gpus):
    fake_gpus(1)
    distributed.init_distributed(backend="gloo")
    assert fake_group == {"backend": "gloo", "set_device": torch.device("cuda", 0)}


def test_collectives_put_their_tensors_on_the_groups_device(monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert distributed._group_device() == torch.device("cuda", 1)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert distributed._group_device() == torch.device("cpu")


# ------------------------------------------------------------------------------------------- CPU numerics
def _digits():
    ds = load_dataset("digits").subset(256, 128)
    return ds, make_loaders(ds, batch_size=32, seed=0)


def test_cpu_training_is_bit_identical_to_a_plain_torch_loop():
    """The device plumbing (batch and model moves) must not change a single bit of CPU training."""
    ds, _ = _digits()
    torch.manual_seed(7)
    init = build_model("lenet300", ds.input_shape, ds.num_classes).state_dict()

    def fresh():
        net = build_model("lenet300", ds.input_shape, ds.num_classes)
        net.load_state_dict(init)
        return net

    runs = {}
    for device in ("auto", "cpu"):
        if device == "auto" and not NO_CUDA:
            continue  # auto means the GPU there
        net, tr = fresh(), _digits()[1][0]  # a fresh loader: each one's shuffling generator advances as it is read
        train(net, tr, TrainConfig(epochs=2, lr=0.05, seed=0, progress=False, device=device))
        runs[device] = net.state_dict()
    ref, tr = fresh(), _digits()[1][0]  # reference: the same recipe written out with torch alone
    torch.manual_seed(0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 * len(tr))
    for _ in range(2):
        for x, y in tr:
            loss = nn.functional.cross_entropy(ref(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    for state in runs.values():
        for k, v in ref.state_dict().items():
            assert torch.equal(state[k], v), k


def test_evaluate_and_predict_run_on_the_models_device_and_return_cpu_logits():
    seen = []

    class Probe(nn.Linear):
        def forward(self, x):
            seen.append((x.device, self.weight.device))
            return super().forward(x)

    torch.manual_seed(0)
    net = Probe(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    data = [(x[:6], y[:6]), (x[6:], y[6:])]
    logits = predict(net, data)
    assert logits.device == torch.device("cpu") and torch.allclose(logits, net(x))
    expected = 100.0 * float((net(x).argmax(1) == y).sum()) / 10
    assert evaluate(net, data) == expected
    assert all(xd == wd == module_device(net) for xd, wd in seen)
    assert module_device(nn.ReLU()) == torch.device("cpu")  # no tensors: cpu
    bn_only = nn.BatchNorm1d(3, affine=False)
    assert module_device(bn_only) == bn_only.running_mean.device  # buffers count when there are no parameters


def test_mask_callback_leaves_the_callers_masks_as_they_were():
    """Masks are copied once to the weights' dtype/device for the run; the caller's dict is untouched."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    masks = magnitude_masks(net, 0.5)
    before = {k: v.clone() for k, v in masks.items()}
    data = [(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 2, (8,)))]
    train(net, data, TrainConfig(epochs=3, lr=0.1, progress=False, device="cpu"), callbacks=[MaskCallback(masks)])
    for name, m in {"0": net[0], "2": net[2]}.items():
        assert masks[name].dtype == torch.bool and torch.equal(masks[name], before[name])
        assert int((m.weight[~masks[name]] != 0).sum()) == 0 and int((m.weight[masks[name]] == 0).sum()) == 0


# ------------------------------------------------------------------------------------------------ CLI / recipe
@pytest.mark.parametrize(("args", "message"), [
    (["train", "--data", "digits", "--epochs", "1", "--device", "tpu"], "error: unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
    (["run-recipe", "r.yaml", "--device", "cuda:x"], "error: unknown device 'cuda:x'"),
    pytest.param(["train", "--data", "digits", "--device", "cuda"],
                 "error: device 'cuda' requested but this PyTorch build has no CUDA / no GPU visible: use --device cpu",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
    pytest.param(["run-recipe", "r.yaml", "--device", "cuda:0"], "error: device 'cuda:0' requested but this PyTorch build has no CUDA",
                 marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")),
])
def test_cli_bad_device_exits_2_with_one_line_before_any_work(tmp_path, run_main, args, message):
    (tmp_path / "r.yaml").write_text("model: lenet300\ndata: {name: digits, train_samples: 64, test_samples: 32}\ntraining: {epochs: 1}\n")
    code, err = run_main(args, tmp_path)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(message), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]  # nothing written


def test_recipe_device_is_validated_and_not_part_of_the_run_identity():
    from nncompress.recipes.runner import _fingerprint
    from nncompress.recipes.schema import load_recipe

    base = {"model": "lenet300", "training": {"epochs": 1}}
    assert load_recipe(base).device == "auto"
    assert load_recipe({**base, "device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(UserError, match="device"):
        load_recipe({**base, "device": "gpu0"})
    # a run checkpointed on one device can resume on another
    assert _fingerprint(load_recipe({**base, "device": "cpu"})) == _fingerprint(load_recipe(base))


# ------------------------------------------------------------------------------------------------ GPU only
@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_cuda_training_with_mask_and_teacher():
    """LeNet-300-100 trains on cuda with a pruning mask and a distillation teacher: the student, its masks'
    effect, the teacher and every batch are on the GPU during training; all come back where they were."""
    ds, (tr, te) = _digits()
    torch.manual_seed(0)
    teacher = build_model("lenet300", ds.input_shape, ds.num_classes)
    train(teacher, tr, TrainConfig(epochs=2, lr=0.05, progress=False, device="cuda"))
    student = build_model("lenet300", ds.input_shape, ds.num_classes)
    masks = magnitude_masks(student, 0.8)
    where = []

    class Where(Callback):
        def loss(self, model, x, y, output, loss):
            tensors = [*model.parameters(), *model.buffers(), *teacher.parameters(), *teacher.buffers(), x, y, output, loss]
            where.append({t.device.type for t in tensors})
            return loss

    hist = train(student, tr, TrainConfig(epochs=3, lr=0.05, progress=False, device="cuda"),
                 callbacks=[MaskCallback(masks), DistillationCallback(teacher), Where()])
    assert where and all(w == {"cuda"} for w in where)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert module_device(student) == module_device(teacher) == torch.device("cpu")  # handed back on their devices
    assert int((student.fc1.weight[~masks["fc1"]] != 0).sum()) == 0
    assert evaluate(student, te) > 30.0  # chance is 10%


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_a_passed_optimizers_state_follows_the_model_to_the_gpu_and_back():
    """Momentum built on the CPU carries on on the GPU: the result matches an all-CPU run (to GPU rounding)."""
    data = [(torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))]
    cfg = {"epochs": 1, "lr": 0.1, "lr_schedule": "constant", "progress": False}

    class Where(Callback):
        def __init__(self, opt):
            self.opt, self.seen = opt, []

        def on_step_end(self, step, model):
            self.seen.extend(s["momentum_buffer"].device.type for s in self.opt.state.values())

    runs = {}
    for second in ("cpu", "cuda"):
        torch.manual_seed(0)
        net = nn.Linear(4, 3)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        train(net, data, TrainConfig(**cfg, device="cpu"), optimizer=opt)  # momentum buffers made on the CPU
        where = Where(opt)
        train(net, data, TrainConfig(**cfg, device=second), optimizer=opt, callbacks=[where])
        assert where.seen == [second, second]
        assert module_device(net).type == "cpu" and all(s["momentum_buffer"].device.type == "cpu" for s in opt.state.values())
        runs[second] = net.weight.detach().clone()
    assert torch.allclose(runs["cuda"], runs["cpu"], atol=1e-6)


BIN = Path(sys.executable).parent
RECIPE = {
    "name": "nccl-test", "model": "lenet300", "device": "cuda",
    "data": {"name": "digits", "train_samples": 256, "test_samples": 128},
    "pretrain": {"epochs": 1}, "training": {"epochs": 3, "lr": 0.02, "batch_size": 32},
    "policies": [{"method": "agp", "final_sparsity": 0.7, "start": 0, "end": 3}, {"method": "distill", "start": 0}],
}
SCRIPT = """
import json, sys
import torch.distributed as dist
from nncompress.recipes.runner import run_recipe
from nncompress.training.distributed import gather_json, is_main_process, mean_over_ranks, world

recipe, out = json.loads(sys.argv[1]), sys.argv[2]
result = run_recipe(recipe, out, progress=False)
rank, size = world()
checks = {"backend": dist.get_backend(), "mean": mean_over_ranks(float(rank)), "gathered": gather_json({str(rank): rank})}
if is_main_process():
    print(json.dumps({"history": result.history, **checks}))
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not (BIN / "torchrun").exists(), reason="needs 2 CUDA GPUs and torchrun")
def test_two_nccl_processes_match_one(tmp_path, torchrun_job):
    """Mirror of tests/recipes_yaml/test_distributed.py on two GPUs: nccl is chosen, the collectives work on
    CUDA tensors, and the run ends where one process on one GPU ends (up to GPU float summation order)."""
    from nncompress.core.io import load_weights
    from nncompress.recipes.runner import run_recipe

    two = torchrun_job(SCRIPT, RECIPE)
    assert two["backend"] == "nccl" and two["mean"] == 0.5 and two["gathered"] == {"0": 0, "1": 1}
    one = run_recipe(RECIPE, tmp_path / "one", progress=False)
    assert [h["loss"] for h in two["history"]] == pytest.approx([h["loss"] for h in one.history], rel=1e-3)
    assert [h["top1"] for h in two["history"]] == pytest.approx([h["top1"] for h in one.history], abs=1.0)
    a, b = load_weights(tmp_path / "two/model.safetensors"), load_weights(tmp_path / "one/model.safetensors")
    for k in a:
        assert float(((a[k] == 0) == (b[k] == 0)).float().mean()) > 0.999, k
        assert torch.allclose(a[k], b[k], atol=1e-4), k
