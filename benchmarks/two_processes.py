"""CPU seconds of the same training loop (CNN-1..5, batch 64, one thread) alone and with a second copy
beside it: what two workers on two cores cost each other.

    python benchmarks/two_processes.py
"""

from __future__ import annotations

import multiprocessing
import time

import torch

from pfedlora.models.registry import build_model


def train(steps: int = 16) -> float:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    models = [build_model(f"cnn{i}", 3, 10) for i in range(1, 6)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.01) for m in models]

    def work(n: int) -> None:
        for _ in range(n):
            for model, optimizer in zip(models, optimizers):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()

    work(2)
    began = time.process_time()
    work(steps)
    return time.process_time() - began


if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        alone = [pool.apply(train) for _ in range(2)]
    with context.Pool(2) as pool:
        side_by_side = pool.starmap(train, [()] * 2)
    print(f"alone: {', '.join(f'{s:.2f}' for s in alone)} CPU-s; "
          f"side by side: {', '.join(f'{s:.2f}' for s in side_by_side)} CPU-s")
