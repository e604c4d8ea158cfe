"""Run a recipe: one training schedule on which pruning, regularization, QAT, distillation and weight sharing
act in their epoch/step ranges (after Distiller's compression scheduler).

The run is split into phases at the epochs where a policy changes the model itself (QAT inserts fake
quantizers, sharing swaps weights for codebooks, channel removal thins layers); within a phase one
`training.train` call runs with every policy as a callback gated to its range. The learning rate follows
`lr_schedule` over the whole run (not per phase), the data order depends only on (seed, epoch), and the
RNG state (the CPU's and, on a GPU, that GPU's) is carried across phases, so a run is reproducible and can resume from any epoch checkpoint.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from nncompress.architectures import build_model
from nncompress.core.errors import UserError
from nncompress.core.guards import DivergenceError, check_accuracy_kept, check_finite_weights, check_hyperparameter
from nncompress.core.io import atomic_write_text, load_weights, save_weights, state_dict_mismatch
from nncompress.core.layers import compressible_layers, plain_state_dict
from nncompress.core.seed import seed_everything
from nncompress.data import Dataset, load_dataset
from nncompress.distillation import DistillationCallback
from nncompress.pruning import AGPPruner, LevelPruner, finalize, load_masked_state_dict
from nncompress.pruning.structured import prune_channels
from nncompress.quantization import convert_qat, prepare_qat
from nncompress.quantization.pipeline import save_quantized
from nncompress.recipes.schema import LRSchedule, Recipe, load_recipe
from nncompress.sharing import share_weights
from nncompress.training import Callback, TrainConfig, evaluate, train
from nncompress.training.checkpoint import load_checkpoint, save_checkpoint
from nncompress.training.device import module_device, resolve_device
from nncompress.training.distributed import (
    barrier,
    broadcast_module,
    init_distributed,
    mean_over_ranks,
    world,
)
from nncompress.training.regularizers import WeightRegularizer

_STRUCTURAL = ("qat", "share", "channels")


def lr_at(schedule: LRSchedule, base_lr: float, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning rate at global step t (0-based) of a run of `epochs`·`steps_per_epoch` steps.

    warmup: lr·(t+1)/W for t < W = warmup_epochs·steps_per_epoch; then, with u = (t − W)/(T − W):
    cosine  min_lr + (lr − min_lr)·(1 + cos πu)/2  (Loshchilov & Hutter 2017, no restarts);
    step    lr·γ^(number of milestones ≤ current epoch);  exponential  lr·γ^epoch;  constant  lr.
    """
    total, warm = epochs * steps_per_epoch, schedule.warmup_epochs * steps_per_epoch
    if step < warm:
        return base_lr * (step + 1) / warm
    epoch = step // steps_per_epoch
    if schedule.kind == "cosine":
        u = (step - warm) / max(total - warm, 1)
        return schedule.min_lr + (base_lr - schedule.min_lr) * 0.5 * (1.0 + math.cos(math.pi * u))
    if schedule.kind == "step":
        return base_lr * schedule.gamma ** sum(1 for m in schedule.milestones if epoch >= m)
    if schedule.kind == "exponential":
        return base_lr * schedule.gamma ** epoch
    return base_lr


@dataclass
class _Clock:
    """Where the run is, shared by every gated callback: global step and epoch."""
    steps_per_epoch: int
    step: int = 0
    epoch: int = 0


class _Gate(Callback):
    """Forward a policy's hooks with global step/epoch, and its per-step hooks only inside [start, end) steps."""

    def __init__(self, inner: Callback, clock: _Clock, start_step: int, end_step: int):
        self.inner, self.clock, self.start_step, self.end_step = inner, clock, start_step, end_step

    def _active(self) -> bool:
        return self.start_step <= self.clock.step < self.end_step

    def on_train_begin(self, model, optimizer):
        self.inner.on_train_begin(model, optimizer)

    def on_epoch_begin(self, epoch, model):
        self.inner.on_epoch_begin(self.clock.epoch, model)

    def on_step_begin(self, step, model):
        if self._active():
            self.inner.on_step_begin(self.clock.step, model)

    def loss(self, model, x, y, output, loss):
        return self.inner.loss(model, x, y, output, loss) if self._active() else loss

    def on_after_backward(self, model):
        if self._active():
            self.inner.on_after_backward(model)

    def on_step_end(self, step, model):
        if self._active():
            self.inner.on_step_end(self.clock.step, model)

    def on_epoch_end(self, epoch, model, metrics):
        self.inner.on_epoch_end(self.clock.epoch, model, metrics)

    def on_train_end(self, model):
        self.inner.on_train_end(model)


class _OneShotLevel(Callback):
    """Level pruning once, at the first step of its range."""

    def __init__(self, pruner: LevelPruner, at_step: int):
        self.pruner, self.at_step = pruner, at_step

    def on_step_begin(self, step, model):
        if step == self.at_step:
            self.pruner.prune(model)


class _Schedule(Callback):
    """Runs first: advances the clock, sets the LR for each step, the data order for each epoch, records history,
    and hands each finished epoch to `on_epoch_done` (checkpointing)."""

    def __init__(self, run: _Run, epoch0: int):
        self.run, self.epoch0 = run, epoch0
        self.optimizer: torch.optim.Optimizer | None = None

    def on_train_begin(self, model, optimizer):
        self.optimizer = optimizer
        if self.run.rng_state is not None:  # carry the RNG across phases and resumes (train() reseeds)
            torch.set_rng_state(self.run.rng_state)
        device = module_device(model)  # the training device: train() moved the model there before this hook
        if device.type == "cuda" and self.run.cuda_rng_state is not None:  # dropout etc. on a GPU draw from its own generator
            torch.cuda.set_rng_state(self.run.cuda_rng_state, device)

    def on_epoch_begin(self, epoch, model):
        clock = self.run.clock
        clock.epoch = self.epoch0 + epoch
        clock.step = clock.epoch * clock.steps_per_epoch
        self.run.sampler.set_epoch(clock.epoch)

    def on_step_begin(self, step, model):
        r = self.run
        r.clock.step = self.epoch0 * r.clock.steps_per_epoch + step  # train() counts steps from 0 in each call
        lr = lr_at(r.recipe.lr_schedule, r.recipe.training.lr, r.clock.step, r.clock.steps_per_epoch, r.recipe.training.epochs)
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def on_epoch_end(self, epoch, model, metrics):
        r = self.run
        row = {"epoch": r.clock.epoch, "loss": mean_over_ranks(metrics["loss"]), "lr": self.optimizer.param_groups[0]["lr"],
               "top1": metrics.get("val_top1"), "sparsity": weight_sparsity(model)}
        r.history.append(row)
        r.rng_state = torch.get_rng_state()
        device = module_device(model)
        if device.type == "cuda":  # only this rank's GPU: get_rng_state_all would open a context on every GPU
            r.cuda_rng_state = torch.cuda.get_rng_state(device)
        if r.on_epoch_done is not None:
            r.on_epoch_done(r, model, self.optimizer)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all Linear/Conv layers (effective weights, masks applied)."""
    zeros = total = 0
    for m in compressible_layers(model).values():
        w = m.weight.detach()
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / max(total, 1)


@dataclass
class RecipeResult:
    name: str
    model_name: str
    data: str
    top1_pretrained: float
    top1_final: float
    sparsity: float
    params: int
    nonzero_params: int
    history: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    recipe: dict = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    ptq_ladder: dict = field(default_factory=dict)  # a 'ptq' policy's rungs and their effect (`ladder_summary`)

    def to_dict(self) -> dict:
        d = asdict(self) if self.model is None else asdict(RecipeResult(**{**self.__dict__, "model": None}))
        d.pop("model")
        return d


class _Run:
    """The mutable state of one run (what a checkpoint must hold besides the weights)."""

    def __init__(self, recipe: Recipe, ds: Dataset, out_dir: Path | None, progress: bool | None):
        self.recipe, self.ds, self.out_dir, self.progress = recipe, ds, out_dir, progress
        t = recipe.training
        self.rank, self.world = world()
        if t.batch_size % self.world or len(ds.x_train) % self.world:
            raise UserError(f"training.batch_size ({t.batch_size}) and the number of training samples ({len(ds.x_train)}) must be "
                            f"divisible by the number of processes ({self.world}) for data-parallel runs")
        self.sampler = DistributedSampler(TensorDataset(ds.x_train, ds.y_train), num_replicas=self.world, rank=self.rank,
                                          shuffle=True, seed=recipe.seed)
        self.loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=t.batch_size // self.world, sampler=self.sampler)
        self.test_loader = DataLoader(TensorDataset(ds.x_test, ds.y_test), batch_size=512)
        self.clock = _Clock(len(self.loader))
        self.history: list[dict] = []
        self.rng_state: torch.Tensor | None = None  # CPU generator state, uint8 (a plain tensor: safetensors, no pickle)
        self.cuda_rng_state: torch.Tensor | None = None  # the training GPU's generator state, uint8; None on the CPU
        self.on_epoch_done = None  # set by resumable runs
        self.optimizer_state: dict | None = None  # restored from a checkpoint

    def example_input(self) -> torch.Tensor:
        return self.ds.x_train[: self.recipe.training.batch_size]


def _dataset(recipe: Recipe, given: Dataset | None = None) -> Dataset:
    d = recipe.data
    ds = given if given is not None else load_dataset(d.name, test_fraction=d.test_fraction, seed=recipe.seed)
    return ds.subset(d.train_samples, d.test_samples) if (d.train_samples or d.test_samples) else ds


def _fresh(recipe: Recipe, ds: Dataset, user_model: nn.Module | None) -> nn.Module:
    """An untouched model: a copy of the user's module, or the zoo model the recipe names."""
    if user_model is not None:
        return copy.deepcopy(user_model)
    if recipe.model is None:
        raise UserError("recipe: 'model' is missing: name a zoo model (see `nncompress zoo list`) or pass model= to run_recipe")
    return build_model(recipe.model, ds.input_shape, ds.num_classes)


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters in an order that does not depend on whether masks are attached yet (module order,
    then plain tensor name), so a resumed run's optimizer state lines up with the interrupted run's."""
    out, seen = [], set()
    for _, m in model.named_modules():
        if isinstance(m, parametrize.ParametrizationList):
            continue  # its `original` is listed under the owning module's plain name
        local = {n: p for n, p in m._parameters.items() if p is not None}
        if parametrize.is_parametrized(m):
            local.update({t: plist.original for t, plist in m.parametrizations.items()})
        for name in sorted(local):
            p = local[name]
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    t = recipe.training
    params = _trainable(model)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0, weight_decay=t.weight_decay)


def _load_into(model: nn.Module, path: str, what: str) -> nn.Module:
    if not Path(path).is_file():
        raise UserError(f"{what}: weights file not found: {path}")
    try:
        return load_masked_state_dict(model, load_weights(path))
    except UserError as e:
        raise UserError(f"{what}: {e}") from None


def _teacher(policy, recipe: Recipe, pretrained: nn.Module, ds: Dataset) -> nn.Module:
    if policy.teacher == "pretrained":
        return copy.deepcopy(pretrained).eval()
    if policy.teacher_model is None and recipe.model is None:
        raise UserError("distill: set teacher_model (a zoo name) for a teacher file, or use teacher: pretrained")
    net = build_model(policy.teacher_model or recipe.model, ds.input_shape, ds.num_classes)
    return _load_into(net, policy.teacher, "distill teacher").eval()


def _callbacks(run: _Run, pretrained: nn.Module) -> list[tuple[Any, Callback]]:
    """(policy, gated callback) for every policy that acts through the training loop."""
    r, spe, out = run.recipe, run.clock.steps_per_epoch, []
    total = r.training.epochs * spe
    for p in r.policies:
        scale = spe if p.unit == "epoch" else 1
        start, end = p.start * scale, (p.end * scale if p.end is not None else total)
        if p.method == "agp":
            freq = p.frequency * scale
            cb = AGPPruner(p.final_sparsity, p.initial_sparsity, start=start, n_steps=max(1, (end - 1 - start) // freq),
                           frequency=freq, unit="step", scope=p.scope, layers=p.layers)
        elif p.method == "level":
            cb, end = _OneShotLevel(LevelPruner(p.sparsity, scope=p.scope, layers=p.layers), start), start + 1
        elif p.method == "regularizer":
            cb = WeightRegularizer(p.strength, p=1.0 if p.kind == "l1" else 2.0, layers=p.layers)
        elif p.method == "distill":
            cb = DistillationCallback(_teacher(p, r, pretrained, run.ds), temperature=p.temperature, alpha=p.alpha)
        else:
            continue
        out.append((p, _Gate(cb, run.clock, start, end)))
    return out


def _apply_structural(model: nn.Module, policy, run: _Run) -> nn.Module:
    """The model-changing policies, applied at the start of their epoch."""
    x = run.example_input()
    if policy.method == "qat":
        return prepare_qat(model, x, policy.weight_bits, policy.act_bits, policy.granularity, method=policy.quantizer)
    finalize(model)  # sharing and thinning work on plain weights
    if policy.method == "share":
        share_weights(model, bits=policy.bits, init=policy.init, seed=run.recipe.seed)
        return model
    return prune_channels(model, x, policy.criterion, ratio=policy.ratio or 0.5, remove_macs=policy.remove_macs,
                          data=[(x, run.ds.y_train[: len(x)])], seed=run.recipe.seed)


def _post_training(run: _Run, model: nn.Module) -> nn.Module:
    """A 'ptq' policy's ladder on the trained (pruned, thinned) float model, after the last epoch.

    Calibration reads the first `calib_batches`·64 training samples in order, not the sharded shuffled loader,
    so every rank of a data-parallel run quantizes to the same graph. The rungs and their effect (top-1
    against plain static quantization with the same settings) go to `run.ptq_report`."""
    p = next((p for p in run.recipe.policies if p.method == "ptq"), None)
    if p is None:
        return model
    from nncompress.quantization.adaround import AdaRoundConfig
    from nncompress.quantization.ladder import ptq_ladder
    from nncompress.quantization.pipeline import ladder_summary
    from nncompress.quantization.ptq import quantize_static

    model.eval()
    calib = run.ds.x_train[: p.calib_batches * 64].to(module_device(model))
    bias_correction = None if p.bias_correction == "none" else p.bias_correction
    gm = ptq_ladder(model, calib, p.weight_bits, p.act_bits, p.granularity, p.calibration, p.calib_batches, cle=p.cle,
                    bias_correction=bias_correction, adaround=p.adaround,
                    adaround_config=AdaRoundConfig(iters=p.adaround_steps, seed=run.recipe.seed))
    plain = quantize_static(model, calib, p.weight_bits, p.granularity, p.calibration, p.calib_batches, p.act_bits)
    run.ptq_report = ladder_summary(gm.ptq_ladder_report, p.cle, bias_correction, p.adaround, evaluate(plain, run.test_loader),
                                    evaluate(gm, run.test_loader))
    return gm


def _pretrain(recipe: Recipe, ds: Dataset, run: _Run, user_model: nn.Module | None) -> tuple[nn.Module, float]:
    seed_everything(recipe.seed)
    model = _fresh(recipe, ds, user_model)
    if recipe.weights:
        _load_into(model, recipe.weights, "weights")
    elif recipe.pretrain.epochs:
        loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=recipe.training.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(recipe.seed))
        train(model, loader, TrainConfig(epochs=recipe.pretrain.epochs, lr=recipe.pretrain.lr, seed=recipe.seed, progress=run.progress,
                                         device=recipe.device))
    return model, evaluate(model, run.test_loader)


def execute(run: _Run, model: nn.Module, pretrained: nn.Module, start_epoch: int = 0) -> nn.Module:
    """Train from `start_epoch` to the end, applying structural policies at their epochs."""
    r = run.recipe
    gated = _callbacks(run, pretrained)
    bounds = sorted({0, r.training.epochs, *(p.start for p in r.policies if p.method in _STRUCTURAL)})
    for a, b in itertools.pairwise(bounds):
        if b <= start_epoch:
            continue
        if a >= start_epoch:  # a structural change at a (on resume, the checkpoint already holds it)
            for p in r.policies:
                if p.method in _STRUCTURAL and p.start == a:
                    model = _apply_structural(model, p, run)
        first = max(a, start_epoch)
        cbs = [_Schedule(run, first)] + [g for _, g in gated]
        opt = _optimizer(model, r)
        if run.optimizer_state is not None:
            if a < start_epoch:  # resuming inside this phase (a phase that starts now begins with a fresh optimizer)
                opt.load_state_dict(run.optimizer_state)
            run.optimizer_state = None
        cfg = TrainConfig(epochs=b - first, lr=r.training.lr, lr_schedule="constant", seed=r.seed + first, progress=run.progress,
                          device=r.device)
        train(model, run.loader, cfg, callbacks=cbs, val_loader=run.test_loader, optimizer=opt)
    if any(p.method == "qat" for p in r.policies):
        model = convert_qat(model)
    return finalize(model)


def _fingerprint(recipe: Recipe) -> str:
    # the device is not part of the run's identity: a run checkpointed on a GPU may resume on the CPU
    return hashlib.sha256(json.dumps(recipe.model_dump(mode="json", exclude={"device"}), sort_keys=True).encode()).hexdigest()[:16]


def _checkpointer(run: _Run, fingerprint: str):
    def save(run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        tensors = {"rng_state": run.rng_state}
        if run.cuda_rng_state is not None:
            tensors["cuda_rng_state"] = run.cuda_rng_state
        save_checkpoint(run.out_dir / "checkpoints", run.clock.epoch, model.state_dict(), optimizer,
                        {"epoch": run.clock.epoch, "history": run.history, "recipe": fingerprint}, tensors)
    return save


def _resume(run: _Run, pretrained: nn.Module, fingerprint: str) -> tuple[nn.Module, int]:
    """The model as it was at the end of the last checkpointed epoch, and the epoch to continue from."""
    ckpt = load_checkpoint(run.out_dir / "checkpoints", state_keys=("epoch", "history", "recipe"), tensor_keys=("rng_state",))
    if ckpt is None:
        return copy.deepcopy(pretrained), 0
    if ckpt.state["recipe"] != fingerprint:
        raise UserError(f"the checkpoint in {run.out_dir} was written by a different recipe: use another --out, or run without --resume")
    epoch = ckpt.state["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < run.recipe.training.epochs:
        raise UserError(f"the checkpoint in {run.out_dir} names epoch {epoch!r}, not one of this recipe's 0..{run.recipe.training.epochs - 1}: "
                        "delete its checkpoints/ folder or run without --resume")
    start = epoch + 1
    model = copy.deepcopy(pretrained)
    for p in run.recipe.policies:  # rebuild the structure (fake quantizers, codebooks, thinned layers) the weights need
        if p.method in _STRUCTURAL and p.start < start:
            model = _apply_structural(model, p, run)
    if set(model.state_dict()) == set(ckpt.model):  # structure complete (e.g. codebooks, whose buffers include a mask)
        problem = state_dict_mismatch(model.state_dict(), ckpt.model)
        if problem:
            raise UserError(f"the checkpoint in {run.out_dir} does not fit this recipe's model: {problem}; "
                            "delete its checkpoints/ folder or run without --resume")
        model.load_state_dict(ckpt.model)
    else:  # pruning masks still to attach
        load_masked_state_dict(model, ckpt.model)
    run.history, run.optimizer_state, run.rng_state = ckpt.state["history"], ckpt.optimizer, ckpt.tensors["rng_state"]
    run.cuda_rng_state = ckpt.tensors.get("cuda_rng_state")  # absent when checkpointed on the CPU: train()'s seed stands
    return model, start


def _on_device(recipe: Recipe, device: str | None) -> Recipe:
    """The recipe with its `device` replaced by the caller's (`--device`), when one is given."""
    return recipe if device is None else recipe.model_copy(update={"device": device})


def _check_numbers(recipe: Recipe) -> None:
    """Learning rates and schedule factors finite (and > 0): `lr: .inf` passes a `gt=0` field and trained to NaN."""
    check_hyperparameter("training.lr", recipe.training.lr)
    check_hyperparameter("pretrain.lr", recipe.pretrain.lr)
    sched = recipe.lr_schedule
    for name in ("min_lr", "gamma", "warmup_epochs"):
        value = getattr(sched, name, None)
        if value is not None:
            check_hyperparameter(f"lr_schedule.{name}", value, positive=False)


def _remove_new_outputs(run: "_Run", existed: set[str] | None) -> None:
    """After a divergence, delete what this run wrote in out_dir (pretrained weights, checkpoints) and nothing else;
    `existed`: the names out_dir held before the run, None when the run created out_dir."""
    import shutil

    if run.out_dir is None or run.rank != 0 or not run.out_dir.is_dir():
        return
    for name in ("pretrained.safetensors", "checkpoints"):
        path = run.out_dir / name
        if name in (existed or set()) or not path.exists():
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if existed is None and not any(run.out_dir.iterdir()):
        run.out_dir.rmdir()


def run_recipe(path_or_dict: str | Path | dict, out_dir: str | Path | None = None, *, model: nn.Module | None = None,
               dataset: Dataset | None = None, threads: int = 1, progress: bool | None = None, resume: bool = False,
               device: str | None = None, allow_drop: bool = False) -> RecipeResult:
    """Validate and run a recipe (YAML path, YAML text or dict); returns metrics, history and the compressed model.

    With `out_dir`, writes `pretrained.safetensors`, a checkpoint after every epoch (`checkpoints/`), the final
    weights (`model.safetensors`, or `quantized.safetensors` with integer codes after QAT), `result.json`,
    `report.html`/`report.md`, and `model.onnx` when the recipe asks for `export: {onnx: true}`.
    `resume=True` continues from the last checkpoint in `out_dir` (after a crash or kill -9) and ends with the
    same numbers as an uninterrupted run.

    Bring your own model: pass `model=` (any nn.Module whose Linear/Conv layers the policies act on; it is
    copied, never modified) and `dataset=` (an `nncompress.data.Dataset`, e.g. built from your tensors);
    the recipe's `model` and `data.name` are then ignored. Under `torchrun`, each process trains on its
    shard of every batch and rank 0 writes the files. `device` overrides the recipe's `device:` (auto: this
    rank's GPU when CUDA is present, over nccl; else the CPU, over gloo).

    Divergence (issue 12): a NaN/inf loss or weights, or a final top-1 at chance level while the pretrained model
    was well above it, raises DivergenceError and removes what the run wrote; `allow_drop=True` turns the
    accuracy check (only) into a warning.
    """
    t0 = time.perf_counter()
    torch.set_num_threads(threads)
    recipe = _on_device(load_recipe(path_or_dict), device)
    _check_numbers(recipe)
    resolve_device(recipe.device)  # a bad or unavailable device fails here, before any work
    init_distributed(device=recipe.device)  # under torchrun: join the group; each rank trains on its shard, rank 0 writes the files
    if resume and out_dir is None:
        raise UserError("resume needs the output directory of the interrupted run (--out)")
    ds = _dataset(recipe, dataset)
    run = _Run(recipe, ds, Path(out_dir) if out_dir else None, progress)
    run.allow_drop = allow_drop
    existed = {p.name for p in run.out_dir.iterdir()} if run.out_dir is not None and run.out_dir.is_dir() else None
    try:
        return _run(run, recipe, path_or_dict, device, model, ds, resume, t0)
    except DivergenceError as e:
        _remove_new_outputs(run, None if existed is None else existed | ({"pretrained.safetensors", "checkpoints"} if resume else set()))
        raise DivergenceError(f"recipe '{recipe.name}': {e}; the recipe's lr is training.lr / pretrain.lr") from None


def _run(run: "_Run", recipe: Recipe, path_or_dict, device, model, ds, resume: bool, t0: float) -> RecipeResult:
    """The body of `run_recipe` once the run's state exists (so a divergence can clean up after it)."""
    recipe = _on_device(load_recipe(path_or_dict, steps_per_epoch=run.clock.steps_per_epoch), device)  # step ranges vs. the real run length
    fingerprint = _fingerprint(recipe)
    pre_file = run.out_dir / "pretrained.safetensors" if run.out_dir else None
    if resume and pre_file.is_file():
        pretrained = _load_into(_fresh(recipe, ds, model), str(pre_file), "pretrained weights")
        top1_pre = evaluate(pretrained, run.test_loader)
    else:
        pretrained, top1_pre = _pretrain(recipe, ds, run, model)
    broadcast_module(pretrained)
    if run.out_dir is not None and run.rank == 0:
        save_weights(pretrained.state_dict(), pre_file, metadata={"model": recipe.model or type(pretrained).__name__})
        run.on_epoch_done = _checkpointer(run, fingerprint)
    net, start = _resume(run, pretrained, fingerprint) if resume else (copy.deepcopy(pretrained), 0)
    net = execute(run, net, pretrained, start_epoch=start)
    net = _post_training(run, net)
    result = _finish(run, net, top1_pre, t0, pretrained)
    barrier()  # the other ranks return once rank 0's files exist
    return result


def _finish(run: _Run, model: nn.Module, top1_pre: float, t0: float, pretrained: nn.Module) -> RecipeResult:
    r = run.recipe
    layers = compressible_layers(model)
    params = sum(m.weight.numel() for m in layers.values())
    nonzero = sum(int((m.weight != 0).sum()) for m in layers.values())
    result = RecipeResult(r.name, r.model or type(pretrained).__name__, run.ds.name, top1_pre, evaluate(model, run.test_loader), 1 - nonzero / max(params, 1),
                          params, nonzero, run.history, {}, 0.0, r.model_dump(mode="json"), model)
    result.ptq_ladder = getattr(run, "ptq_report", {})  # before result.json is written
    check_finite_weights(model, "the recipe's final model", "lower training.lr in the recipe")
    check_accuracy_kept(top1_pre, result.top1_final, run.ds.num_classes, "the compressed model (vs the pretrained one)",
                        "lower training.lr or soften the policies (sparsity, bits)", allow_drop=getattr(run, "allow_drop", False))
    if run.rank != 0:
        run.out_dir = None  # rank 0 writes the files
    if run.out_dir is not None:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        if hasattr(model, "quant_config"):
            path = run.out_dir / "quantized.safetensors"
            save_quantized(model, path)
        else:
            path = run.out_dir / "model.safetensors"
            save_weights(plain_state_dict(model), path, metadata={"model": r.model or type(pretrained).__name__, "recipe": r.name})
        result.files["weights"] = str(path)
        if r.export.onnx:
            from nncompress.export.onnx import export_onnx

            result.files["onnx"] = str(export_onnx(model, run.example_input()[:1], run.out_dir / "model.onnx"))
        from nncompress.report import build_report
        from nncompress.report.run import value_bits

        report = build_report(pretrained, model, run.ds.input_shape, top1_pre, result.top1_final, title=f"nncompress report: {r.name}",
                              value_bits=value_bits(result.recipe), history=run.history, extra={"model": r.model or type(pretrained).__name__, "data": run.ds.name})
        html, md = report.write(run.out_dir / "report.html", run.out_dir / "report.md")
        result.files.update(report_html=str(html), report_md=str(md))
    result.seconds = time.perf_counter() - t0
    if run.out_dir is not None:
        result.files["result"] = str(run.out_dir / "result.json")
        atomic_write_text(run.out_dir / "result.json", json.dumps(result.to_dict(), indent=2))
    return result
