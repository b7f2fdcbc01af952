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
                  "image_folder", "client_npz", "client_folders", "table", "hf"] = Field(default="digits",
                                                                                         description="The dataset: "
                                                                                                     "digits, "
                                                                                                     "cifar10, "
                                                                                                     "cifar100, "
                                                                                                     "trec, sst2, "
                                                                                                     "sst5, "
                                                                                                     "text_csv, "
                                                                                                     "text_folder, "
                                                                                                     "or your own "
                                                                                                     "data: "
                                                                                                     "image_folder, "
                                                                                                     "client_npz, "
                                                                                                     "client_folders, "
                                                                                                     "table, hf.")
    path: str | None = Field(default=None,
                             description="Where the data is (a directory, an archive, a table file, or a Hugging "
                                         "Face hub id); not needed for digits.")
    cache_dir: str | None = Field(default=None,
                                  description="Cache for decoded arrays and token ids; null: $PFEDLORA_CACHE or "
                                              "~/.cache/pfedlora.")
    download: bool = Field(default=False,
                           description="Allow downloading the official archive (CIFAR) or a hub dataset (hf); "
                                       "nothing is downloaded otherwise.")
    augment: bool = Field(default=False,
                          description="Random crop (zero padding 4) and horizontal flip of every training "
                                      "mini-batch, drawn from the client's generator (images only).")
    # robustness experiments: corrupt this fraction of every client's training labels
    label_noise: float = Field(default=0.0, ge=0, lt=1,
                               description="Fraction of each client's training labels corrupted (test labels stay "
                                           "clean).")
    noise_kind: Literal["symmetric", "pair"] = Field(default="symmetric",
                                                     description="How labels are corrupted: symmetric (uniform over "
                                                                 "the other classes) or pair (y -> y+1 mod C).")
    # > 0: evaluate on a validation split carved from each client's training data (for tuning)
    validation_fraction: float = Field(default=0.0, ge=0, le=0.5,
                                       description="> 0: evaluate on a split carved from each client's training "
                                                   "data instead of the test split (for tuning; the test split is "
                                                   "not read).")
    # text datasets (see pfedlora.data.text)
    tokenizer: str = Field(default="minilm",
                           description="Text: minilm (the packaged MiniLM tokenizer) or a local Hugging Face "
                                       "tokenizer folder.")
    max_length: int = Field(default=32, ge=4, le=512,
                            description="Text: tokens per example, padded or truncated.")
    # any dataset: keep a seeded random subset (small CPU budgets, tests)
    max_train_samples: int | None = Field(default=None, ge=1,
                                          description="Keep a seeded random subset of at most this many training "
                                                      "samples (the run header says how many of how many).")
    max_test_samples: int | None = Field(default=None, ge=1,
                                         description="Keep a seeded random subset of at most this many test samples "
                                                     "(the run header says how many of how many).")
    # --- bring your own data (docs/guide/data.md, "Bring your own data") ---
    # images: side of the square images models see; null keeps the native size (all images must share it)
    image_size: int | None = Field(default=None, ge=8, le=512,
                                   description="Image folders and tables: side of the square images models see; "
                                               "null keeps the native size, which every image must share.")
    # how an image of another size reaches image_size: resize (bilinear) or pad (centred, zeros; never shrinks)
    image_fit: Literal["resize", "pad"] = Field(default="resize",
                                                description="How an image of another size reaches image_size: "
                                                            "resize (bilinear) or pad (centred on zeros; never "
                                                            "shrinks).")
    # columns of tables (text_csv, table, hf); image_column: image paths (table) or images (hf)
    text_column: str = Field(default="text",
                             description="Column holding the text in tables (text_csv, table, hf).")
    label_column: str = Field(default="label",
                              description="Column holding the label in tables (text_csv, table, hf).")
    image_column: str | None = Field(default=None,
                                     description="table: the column of image paths; hf: the image column (default: "
                                                 "the first Image feature).")
    # table/hf image paths: false keeps them inside the dataset's folder (no .., absolute, ~ or symlink
    # out), so a downloaded table cannot make a run read other files; true allows any path
    allow_outside_paths: bool = Field(default=False,
                                      description="table, hf: allow image paths outside the dataset's folder "
                                                  "(.., absolute, ~, symlinks out); false refuses them.")
    # partition.kind given: the column naming each row's client (table, hf)
    client_column: str | None = Field(default=None,
                                      description="table, hf with partition.kind given: the column naming each "
                                                  "row's client.")
    # hf: split names; split_test null (or absent from the data): a seeded test_fraction split
    split_train: str = Field(default="train",
                             description="Name of the training split: the hf split, the train folder of "
                                         "image_folder, text_folder and client_folders, the train file stem of "
                                         "text_csv (e.g. 20news-bydate-train).")
    split_test: str | None = Field(default="test",
                                   description="Name of the test split (as split_train); null (hf, image_folder): "
                                               "hold out a seeded test_fraction instead.")
    # data without a test split (image_folder DIR/<class>/<image>, table, hf): the seeded per-class
    # (per-client with client_column) share of rows held out for test
    test_fraction: float = Field(default=0.25, gt=0, lt=1,
                                 description="Seeded per-class (per-client with client_column) share held out for "
                                             "test when the data has no test split.")


# the built-in datasets' training samples and classes, known before any is loaded: the config refuses a
# federation they cannot fill (num_clients, classes_per_client) without importing torch or reading data.
# digits: sklearn's 1,797 images, 25% stratified test split (1,347 train); CIFAR: the official 50,000.
KNOWN_TRAIN_SAMPLES = {"digits": 1347, "cifar10": 50_000, "cifar100": 50_000}
KNOWN_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100}

GIVEN_DATASETS = ("client_npz", "client_folders")  # always partitioned by the data itself
COLUMN_DATASETS = ("table", "hf")  # given partition with dataset.client_column
# datasets whose kind (images or token ids) is known only once the data is read
DATA_DEFINED_DATASETS = ("client_npz", "table", "hf")


