"""The plain sequential pFedLoRA loop peers use, as the baseline for ``engine.py --reference``.

The usual way (HtFLlib / PFLlib style): a ``DataLoader`` per client over a ``TensorDataset``
(per-sample indexing and collation), one persistent module per client whose max pools are torch's
``nn.MaxPool2d`` (as in those libraries' model zoos; pfedlora's models use its bit-identical
``MaxPool2x2``), a deep copy of the global adapter for every selected client each round,
optimizers rebuilt per step, and the aggregate computed over deep-copied state dicts. Semantics are identical to the engine: the same client
selection, the same per-client batch permutations (drawn from the same seeded generator, in the same
order), the same losses, optimizer, clipping and FedAvg weights, so its accuracy after a fixed
number of rounds matches the engine's within float tolerance (tests/benchmarks check this).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from pfedlora.algorithms import pfedlora
from pfedlora.algorithms.base import load_into, unprefixed
from pfedlora.federation.simulation import Federation, client_generator, sample_clients
from pfedlora.metrics.accuracy import accuracy
from pfedlora.models.adapters import PersonalizedModel
from pfedlora.models.pooling import MaxPool2x2


def with_torch_pools(module: nn.Module) -> nn.Module:
    """``module`` with every pfedlora ``MaxPool2x2`` replaced by torch's ``nn.MaxPool2d`` (same numbers)."""
    for name, child in module.named_children():
        if isinstance(child, MaxPool2x2):
            setattr(module, name, nn.MaxPool2d(2, ceil_mode=child.ceil_mode))
        else:
            with_torch_pools(child)
    return module


class SeededPermutation(Sampler[int]):
    """Each iteration draws ``torch.randperm(n, generator)``: the engine's batch order."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = n, generator

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n


class ReferenceFederation:
    """pFedLoRA with one nn.Module per client, trained client after client."""

    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        ctx = federation.context
        server_state, _ = pfedlora.init_server(ctx)
        self.global_adapter = with_torch_pools(copy.deepcopy(pfedlora._adapter_workspace(ctx)))
        load_into(self.global_adapter, server_state)
        self.local_models: dict[int, nn.Module] = {}
        self.adapters: dict[int, nn.Module] = {}
        for k in range(federation.config.num_clients):
            model = with_torch_pools(ctx.new_model(ctx.client_arch(k), seed=0))
            load_into(model, unprefixed(pfedlora.LOCAL, pfedlora.init_client(ctx, k)))
            self.local_models[k] = model

    def _train(self, model: PersonalizedModel, params: list[nn.Parameter], loader: DataLoader, epochs: int) -> int:
        cfg = self.federation.config.train
        trainable = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        model.train()
        seen = 0
        for _ in range(epochs):
            for xb, yb in loader:
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
                optimizer.step()
                seen += int(yb.shape[0])
        for p in model.parameters():
            p.requires_grad_(True)
        return seen

    def round(self, round_index: int) -> int:
        """One round; returns the number of training samples processed."""
        fed = self.federation
        cfg = fed.config
        states, weights, seen = [], [], 0
        for k in sample_clients(cfg, round_index):
            data = fed.clients[k]
            adapter = copy.deepcopy(self.global_adapter)
            model = PersonalizedModel(self.local_models[k], adapter, cfg.adapter.mu, cfg.adapter.placement)
            generator = client_generator(cfg, round_index, k)
            loader = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=cfg.train.batch_size,
                                sampler=SeededPermutation(data.num_train, generator))
            seen += self._train(model, list(model.local_model.parameters()), loader, cfg.train.local_epochs)
            seen += self._train(model, list(model.adapter.parameters()), loader, cfg.train.adapter_epochs)
            self.adapters[k] = adapter
            states.append(copy.deepcopy(adapter.state_dict()))
            weights.append(float(data.num_train))
        total = sum(weights)
        averaged = {name: sum(s[name].double() * w for s, w in zip(states, weights)) / total for name in states[0]}
        self.global_adapter.load_state_dict({name: t.float() for name, t in averaged.items()})
        return seen

    def evaluate(self) -> list[float]:
        fed = self.federation
        accuracies = []
        for k, data in enumerate(fed.clients):
            adapter = self.adapters.get(k, self.global_adapter)
            model = PersonalizedModel(self.local_models[k], adapter, fed.config.adapter.mu, fed.config.adapter.placement)
            accuracies.append(accuracy(model, data.test_x, data.test_y, fed.config.train.eval_batch_size,
                                       normalize=data.normalize))
        return accuracies
