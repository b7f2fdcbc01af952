"""FedL2G's meta-step with and without the FLOP counter, one thread, CNN-1..5 (medians of 7).

    python benchmarks/fedl2g_meta_count.py

The evidence for counting the meta-step once per model structure and shape (``fedl2g.client_update``).
"""

from __future__ import annotations

import statistics
import time

import torch

from pfedlora.algorithms import fedl2g
from pfedlora.algorithms.base import FederationContext
from pfedlora.config import build_config
from pfedlora.metrics import flops as flop_count

torch.set_num_threads(1)
config = build_config({"algorithm": "fedl2g", "num_clients": 5})
ctx = FederationContext(config, (3, 32, 32), 10, torch.device("cpu"))
g = torch.Generator().manual_seed(0)
study_x = torch.randn(config.fedl2g.study_batches * config.train.batch_size, 3, 32, 32, generator=g)
study_y = torch.randint(0, 10, (study_x.shape[0],), generator=g)
quiz_x = torch.randn(config.fedl2g.quiz_size, 3, 32, 32, generator=g)
quiz_y = torch.randint(0, 10, (quiz_x.shape[0],), generator=g)
guidance = torch.randn(10, fedl2g.guidance_dim(ctx), generator=g)
for arch in ["cnn1", "cnn2", "cnn3", "cnn4", "cnn5"]:
    model = ctx.new_model(arch, seed=0)
    plain, counted = [], []
    for _ in range(7):
        began = time.perf_counter()
        fedl2g.meta_gradient(ctx, model, guidance, study_x, study_y, quiz_x, quiz_y)
        plain.append(time.perf_counter() - began)
        began = time.perf_counter()
        with flop_count.counting():
            fedl2g.meta_gradient(ctx, model, guidance, study_x, study_y, quiz_x, quiz_y)
        counted.append(time.perf_counter() - began)
    print(f"{arch}: plain {statistics.median(plain) * 1e3:.1f} ms, counted {statistics.median(counted) * 1e3:.1f} ms")
