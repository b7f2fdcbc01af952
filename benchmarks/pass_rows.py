"""One inference pass of each CNN over 500 rows, as one forward and in parts, one thread, in this process.

    python benchmarks/pass_rows.py

Prints the median of 7 passes per part size and whether the outputs equal the one-forward outputs bit
for bit: the evidence for ``metrics.accuracy.CPU_PASS_ROWS``.
"""

from __future__ import annotations

import statistics
import time

import torch

from pfedlora.models.registry import build_model

torch.set_num_threads(1)
x = torch.randn(500, 3, 32, 32, generator=torch.Generator().manual_seed(0))
for arch in ["cnn1", "cnn2", "cnn3", "cnn4", "cnn5"]:
    model = build_model(arch, 3, 10).eval()
    row, whole = [], None
    with torch.inference_mode():
        for rows in (500, 256, 128, 64):
            outputs = torch.cat([model.represent(x[i:i + rows]) for i in range(0, 500, rows)])
            whole = outputs if whole is None else whole
            times = []
            for _ in range(7):
                began = time.perf_counter()
                for i in range(0, 500, rows):
                    model.represent(x[i:i + rows])
                times.append(time.perf_counter() - began)
            row.append(f"{rows} rows: {statistics.median(times) * 1e3:.1f} ms"
                       f"{'' if torch.equal(outputs, whole) else ' (outputs differ)'}")
    print(arch, " | ".join(row))
