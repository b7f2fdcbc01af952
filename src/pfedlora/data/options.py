"""The dataset section's options: what to load and how (a plain pydantic model the data layer reads).

The config (:mod:`pfedlora.config`) composes it as ``dataset``; the loaders here take it as ``options``
and never the whole config.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DatasetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: Literal["digits", "cifar10", "cifar100", "trec", "sst2", "sst5", "text_csv", "text_folder",
                  # bring your own data (pfedlora.data.{image_folder,client_data,table,hf}; README)
                  "image_folder", "client_npz", "client_folders", "table", "hf"] = "digits"
    path: str | None = None
    cache_dir: str | None = None
    download: bool = False
    augment: bool = False
    # robustness experiments: corrupt this fraction of every client's training labels
    label_noise: float = Field(default=0.0, ge=0, lt=1)
    noise_kind: Literal["symmetric", "pair"] = "symmetric"
    # > 0: evaluate on a validation split carved from each client's training data (for tuning)
    validation_fraction: float = Field(default=0.0, ge=0, le=0.5)
    # text datasets (see pfedlora.data.text)
    tokenizer: str = "minilm"
    max_length: int = Field(default=32, ge=4, le=512)
    # any dataset: keep a seeded random subset (small CPU budgets, tests)
    max_train_samples: int | None = Field(default=None, ge=1)
    max_test_samples: int | None = Field(default=None, ge=1)
    # --- bring your own data (README "Bring your own data") ---
    # images: side of the square images models see; null keeps the native size (all images must share it)
    image_size: int | None = Field(default=None, ge=8, le=512)
    # how an image of another size reaches image_size: resize (bilinear) or pad (centred, zeros; never shrinks)
    image_fit: Literal["resize", "pad"] = "resize"
    # columns of tables (text_csv, table, hf); image_column: image paths (table) or images (hf)
    text_column: str = "text"
    label_column: str = "label"
    image_column: str | None = None
    # table/hf image paths: false keeps them inside the dataset's folder (no .., absolute, ~ or symlink
    # out), so a downloaded table cannot make a run read other files; true allows any path
    allow_outside_paths: bool = False
    # partition.kind given: the column naming each row's client (table, hf)
    client_column: str | None = None
    # hf: split names; split_test null (or absent from the data): a seeded test_fraction split
    split_train: str = "train"
    split_test: str | None = "test"
    # data without a test split (image_folder DIR/<class>/<image>, table, hf): the seeded per-class
    # (per-client with client_column) share of rows held out for test
    test_fraction: float = Field(default=0.25, gt=0, lt=1)


# the built-in datasets' training samples and classes, known before any is loaded: the config refuses a
# federation they cannot fill (num_clients, classes_per_client) without importing torch or reading data.
# digits: sklearn's 1,797 images, 25% stratified test split (1,347 train); CIFAR: the official 50,000.
KNOWN_TRAIN_SAMPLES = {"digits": 1347, "cifar10": 50_000, "cifar100": 50_000}
KNOWN_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}

GIVEN_DATASETS = ("client_npz", "client_folders")  # always partitioned by the data itself
COLUMN_DATASETS = ("table", "hf")  # given partition with dataset.client_column
# datasets whose kind (images or token ids) is known only once the data is read
DATA_DEFINED_DATASETS = ("client_npz", "table", "hf")


