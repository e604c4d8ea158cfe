import torch

from nncompress.architectures import build_model
from nncompress.data import load_dataset, make_loaders
from nncompress.training import Callback, TrainConfig, evaluate, train


def test_training_is_deterministic_and_learns_digits():
    ds = load_dataset("digits").subset(600, 300)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        net = build_model("lenet300", ds.input_shape, ds.num_classes)
        tr, te = make_loaders(ds, seed=0)
        train(net, tr, TrainConfig(epochs=4, lr=0.05, seed=0, progress=False))
        results.append((evaluate(net, te), net.fc1.weight.detach().clone()))
    assert results[0][0] > 80.0  # chance is 10%
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])


def test_callback_hooks_run_in_order_and_loss_hook_changes_the_objective():
    calls = []

    class Rec(Callback):
        def on_train_begin(self, model, optimizer): calls.append("train_begin")
        def on_epoch_begin(self, epoch, model): calls.append(f"epoch{epoch}")
        def on_step_begin(self, step, model): calls.append("step")
        def loss(self, model, x, y, output, loss): calls.append("loss"); return loss * 0.0 + (model.weight ** 2).sum()
        def on_after_backward(self, model): calls.append("backward")
        def on_step_end(self, step, model): calls.append("end")
        def on_train_end(self, model): calls.append("train_end")

    net = torch.nn.Linear(3, 2)
    data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
    train(net, data, TrainConfig(epochs=1, lr=0.1, momentum=0.0, lr_schedule="constant", progress=False), callbacks=[Rec()])
    assert calls == ["train_begin", "epoch0", "step", "loss", "backward", "end", "train_end"]
    w = torch.nn.Linear(3, 2).weight  # the loss was |W|², so one SGD step scales W by (1 - 2·lr)
    torch.manual_seed(0)
    net2 = torch.nn.Linear(3, 2)
    w0 = net2.weight.detach().clone()
    train(net2, data, TrainConfig(epochs=1, lr=0.1, momentum=0.0, lr_schedule="constant", progress=False), callbacks=[Rec()])
    assert torch.allclose(net2.weight, w0 * 0.8)
    del w


def test_evaluate_counts_top1_in_percent():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0].long(), 3).float()

    data = [(torch.tensor([[0.0], [1.0], [2.0], [2.0]]), torch.tensor([0, 1, 1, 2]))]
    assert evaluate(Fixed(), data) == 75.0
