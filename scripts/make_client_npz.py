"""Write a PFLlib/HtFLlib-layout folder of pre-partitioned clients from sklearn's digits.

    python scripts/make_client_npz.py OUT_DIR [--clients 20] [--size 28] [--alpha 0.5] [--seed 0]

OUT_DIR/train/<k>.npz and OUT_DIR/test/<k>.npz (k = 0..clients-1) each hold a pickled dict
``data = {"x": float32 [N, 1, size, size], "y": int64 [N]}`` written with ``np.savez_compressed``
exactly as PFLlib's generators do; OUT_DIR/config.json gives num_classes. Images: the 8x8 digits
bilinearly resized to size x size grayscale and normalised as PFLlib's MNIST generator does
((x - 0.5) / 0.5 on [0, 1] pixels). Clients: a Dirichlet(alpha) label split, then 75 % of each
client's samples for train and 25 % for test (PFLlib's train_ratio). Deterministic in --seed.
Then: pfedlora run --set dataset.name=client_npz --set partition.kind=given
--set dataset.path=OUT_DIR --set num_clients=20 --set rounds=2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    from pfedlora.data.partition import partition_clients

    bunch = load_digits()
    pixels = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    images = torch.nn.functional.interpolate(pixels, size=(args.size, args.size), mode="bilinear",
                                             align_corners=False).clamp_(0, 1)
    x = ((images - 0.5) / 0.5).numpy().astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    # one Dirichlet label split over all samples; each client's share is then cut 75/25
    splits = partition_clients(y, y, 10, args.clients, kind="dirichlet", alpha=args.alpha, min_samples=8,
                               seed=args.seed)
    rng = np.random.default_rng(args.seed)
    for split in ("train", "test"):
        (args.out / split).mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(splits):
        index = rng.permutation(part.train_idx)
        cut = int(round(0.75 * len(index)))
        for split, chosen in (("train", np.sort(index[:cut])), ("test", np.sort(index[cut:]))):
            np.savez_compressed(args.out / split / f"{k}.npz", data={"x": x[chosen], "y": y[chosen]})
    (args.out / "config.json").write_text(json.dumps({"num_clients": args.clients, "num_classes": 10,
                                                      "non_iid": True, "partition": "dir", "alpha": args.alpha}))
    print(f"wrote {args.clients} clients ({len(y)} digits at {args.size}x{args.size}) to {args.out}")


if __name__ == "__main__":
    main()
