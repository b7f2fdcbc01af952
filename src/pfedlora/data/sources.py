"""Bring-your-own-data sources (docs/guide/data.md, "Bring your own data"), dispatched from ``load_dataset``.

Each source reads the keys it needs from the config's dataset section (``options``).
"""

from __future__ import annotations

from typing import Any

SOURCE_DATASETS = ("image_folder", "client_npz", "client_folders", "table", "hf")


def load_source(name: str, path: str | None, options: Any, *, cache_dir: str | None, download: bool, seed: int,
                tokenizer: str, max_length: int):
    """Load source ``name`` as an ArrayDataset (with ``clients`` set for pre-partitioned data)."""
    if options is None:
        from pfedlora.data.options import DatasetConfig

        options = DatasetConfig(name=name, path=path)
    if name == "image_folder":
        from pfedlora.data.image_folder import load_image_folder

        return load_image_folder(path, options, cache_dir=cache_dir, seed=seed)
    if name == "client_npz":
        from pfedlora.data.client_data import load_client_npz

        return load_client_npz(path, options, max_length=max_length)
    if name == "client_folders":
        from pfedlora.data.client_data import load_client_folders

        return load_client_folders(path, options, cache_dir=cache_dir)
    if name == "table":
        from pfedlora.data.table import load_table

        return load_table(path, options, seed=seed, tokenizer=tokenizer, max_length=max_length)
    if name == "hf":
        from pfedlora.data.hf import load_hf

        return load_hf(path, options, cache_dir=cache_dir, download=download, seed=seed, tokenizer=tokenizer,
                       max_length=max_length)
    raise ValueError(f"unknown source {name!r}")  # load_dataset only passes SOURCE_DATASETS
