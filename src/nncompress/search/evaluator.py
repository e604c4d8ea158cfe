"""Score one architecture the platform-aware way: short training, top-1 on held-out data, latency measured here.

During a search the held-out data is a validation split carved from the training set (`run_search` gives the
Evaluator no test data at all): a winner picked by test accuracy would report an optimistically biased test
score, since the choice itself was fitted to the test set.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from nncompress.analysis.latency import measure_latency_ms
from nncompress.analysis.report import analyze
from nncompress.architectures.summary import count_macs, count_params
from nncompress.data import Dataset, make_loaders
from nncompress.core.errors import UserError
from nncompress.search.reward import RESOURCES, energy_reward, latency_reward
from nncompress.search.space import Arch, MobileNetSpace
from nncompress.training import TrainConfig, evaluate, train


@dataclass
class Candidate:
    """One measured model. `top1` and `reward` come from the Evaluator's held-out split (validation data during a
    search) and are what the search compares; `test_top1` is set only after the choice, for the winner and baseline."""

    name: str
    params: int
    macs: int
    latency_ms: float
    top1: float
    reward: float = math.nan
    arch: dict | None = None
    strategy: str = ""
    test_top1: float | None = None  # filled once, for the chosen model and the baseline, after the choice
    energy_pj: float = math.nan  # analysis estimate (fp32 MACs + weights read from DRAM, Horowitz 45 nm)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Evaluator:
    """Trains each model `epochs` epochs on `dataset.x_train` (seeded), measures top-1 on `dataset.x_test` (the
    held-out split: validation data when `run_search` drives it) and the median batch-1 latency over
    `latency_repeats` calls on `threads` threads; scores ACC·(LAT/T)^w. Caches by architecture and keeps each
    trained model in `models` (by candidate name) so the chosen one can be tested once without retraining.

    `target_ms` may be set after construction (e.g. to a baseline's measured latency) but before the first call.
    `resource="energy"` scores ACC·(E/E_target)^w instead, E the analysis energy estimate, against
    `target_energy_pj` (set the same way).
    """

    space: MobileNetSpace
    dataset: Dataset
    target_ms: float | None = None
    epochs: int = 1
    lr: float = 0.05  # SGD, Nesterov momentum 0.9, cosine schedule
    batch_size: int = 32  # short runs need steps more than large batches
    threads: int = 1
    latency_repeats: int = 20
    alpha: float = -0.07
    beta: float = -0.07
    seed: int = 0
    resource: str = "latency"  # or "energy"
    target_energy_pj: float | None = None
    cache: dict[Arch, Candidate] = field(default_factory=dict)
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    def measure(self, model: nn.Module, name: str) -> Candidate:
        """Train, evaluate and time any model under the same protocol as the searched ones."""
        train_loader, test_loader = make_loaders(self.dataset, self.batch_size, self.seed)
        if len(self.dataset.y_train) % self.batch_size == 1:  # a last batch of one sample breaks batch norm in training
            train_loader = DataLoader(train_loader.dataset, batch_size=self.batch_size, shuffle=True,
                                      generator=train_loader.generator, drop_last=True)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            train(model, train_loader, TrainConfig(epochs=self.epochs, lr=self.lr, seed=self.seed, progress=False))
            top1 = evaluate(model, test_loader)
        finally:
            torch.set_num_threads(before)
        shape = self.dataset.input_shape
        lat = measure_latency_ms(model, torch.zeros(1, *shape), warmup=3, repeats=self.latency_repeats, threads=self.threads)
        cand = Candidate(name, count_params(model), count_macs(model, shape), lat.median_ms, top1,
                         energy_pj=analyze(model, shape).totals["energy_pj"])
        self.models[name] = model
        if self._target() is not None:
            cand.reward = self.score(cand)
        return cand

    def _target(self) -> float | None:
        if self.resource not in RESOURCES:
            raise UserError(f"unknown search resource '{self.resource}': use one of {', '.join(RESOURCES)}")
        return self.target_ms if self.resource == "latency" else self.target_energy_pj

    def score(self, cand: Candidate) -> float:
        """The reward of a measured candidate against this Evaluator's resource and target."""
        if self._target() is None:
            raise ValueError(f"set the {self.resource} target before scoring")
        if self.resource == "energy":
            return energy_reward(cand.top1, cand.energy_pj, self.target_energy_pj, self.alpha, self.beta)
        return latency_reward(cand.top1, cand.latency_ms, self.target_ms, self.alpha, self.beta)

    def __call__(self, arch: Arch) -> Candidate:
        if self._target() is None:
            raise ValueError(f"set the {self.resource} target before scoring architectures")
        if arch not in self.cache:
            torch.manual_seed(self.seed)
            model = self.space.build(arch, self.dataset.input_shape, self.dataset.num_classes)
            cand = self.measure(model, str(arch))
            cand.arch = arch.to_dict()
            self.cache[arch] = cand
        return self.cache[arch]
