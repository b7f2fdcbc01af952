"""One typed, validated config object, from the CLI (YAML file + ``--set`` overrides) to the engine.

Every user mistake (unknown key, bad value, unknown algorithm or model) becomes a
:class:`~pfedlora.errors.UserError` whose message is one line naming the key and what is accepted.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pfedlora import registry
from pfedlora.data.options import (
    COLUMN_DATASETS,
    DATA_DEFINED_DATASETS,
    GIVEN_DATASETS,
    KNOWN_CLASSES,
    KNOWN_TRAIN_SAMPLES,
    DatasetConfig,
)
from pfedlora.errors import UserError

__all__ = ["COLUMN_DATASETS", "DATA_DEFINED_DATASETS", "GIVEN_DATASETS", "Config", "DatasetConfig", "build_config",
           "load_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PartitionConfig(_Section):
    # given: the data names each sample's client (client_npz, client_folders, table/hf + client_column)
    kind: Literal["pathological", "dirichlet", "iid", "given"] = Field(default="pathological",
                                                                       description="pathological (a few classes per "
                                                                                   "client), dirichlet, iid, or "
                                                                                   "given (the data's own clients).")
    classes_per_client: int | None = Field(default=None, ge=1,
                                           description="Pathological: classes per client; null: 2 with at most 10 "
                                                       "classes, else 10.")
    alpha: float = Field(default=0.5, gt=0, description="Dirichlet concentration (smaller: more skewed).")
    share_low: float = Field(default=0.4, gt=0,
                             description="Pathological: each client's share of a class is drawn U(share_low, "
                                         "share_high).")
    share_high: float = Field(default=0.6, gt=0,
                              description="Pathological: upper end of the per-class share (see share_low).")
    min_samples: int = Field(default=10, ge=1, description="Dirichlet: minimum training samples per client.")
    size_skew: float = Field(default=0.0, ge=0,
                             description="> 0: long-tailed client sizes, weights rank^-size_skew over a random "
                                         "client ranking.")

    @model_validator(mode="after")
    def _shares_ordered(self) -> PartitionConfig:
        if self.share_low > self.share_high:
            raise ValueError(f"share_low ({self.share_low}) must be <= share_high ({self.share_high})")
        return self


class TrainConfig(_Section):
    local_epochs: int = Field(default=1, ge=0,
                              description="Epochs on the local model per round (pFedLoRA: with the adapter frozen).")
    adapter_epochs: int = Field(default=1, ge=0,
                                description="pFedLoRA: epochs on the adapter per round (local model frozen).")
    batch_size: int = Field(default=512, ge=1, description="Mini-batch size (the quickstart uses 32).")
    eval_batch_size: int = Field(default=1024, ge=1, description="Evaluation batch size.")
    lr: float = Field(default=0.01, gt=0, description="Learning rate.")
    # sgd: momentum SGD with L2 weight decay (the CNN setting of the papers); adamw: AdamW (decoupled
    # weight decay, betas 0.9/0.999), what transformer fine-tuning uses, with a small lr (configs/nlp)
    optimizer: Literal["sgd", "adamw"] = Field(default="sgd",
                                               description="sgd (momentum SGD, L2 weight decay; the papers' CNN "
                                                           "setting) or adamw (decoupled weight decay, betas "
                                                           "0.9/0.999; what transformer fine-tuning uses).")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum (sgd only).")  # sgd only
    weight_decay: float = Field(default=1e-3, ge=0,
                                description="Weight decay (L2 for sgd, decoupled for adamw).")
    # linear learning-rate warm-up over the first steps of every training call (each call starts a
    # fresh optimizer, so Adam's moment estimates start empty every round); 0: none
    warmup_steps: int = Field(default=0, ge=0,
                              description="Linear learning-rate warm-up over the first steps of every training call "
                                          "(each call starts a fresh optimizer); 0: none.")
    clip_norm: float = Field(default=50.0, gt=0, description="Gradient-norm clipping of every step.")
    # bf16: forward and loss under CPU/CUDA bf16 autocast (weights, optimizer and evaluation stay fp32)
    precision: Literal["fp32", "bf16"] = Field(default="fp32",
                                               description="fp32, or bf16: forward and loss under bf16 autocast "
                                                           "(weights, optimizer and evaluation stay fp32); changes "
                                                           "results.")


# --- reliability: update validation and fault injection -------------------------------------------


class ValidationConfig(_Section):
    """Server-side checks on every upload (see pfedlora.federation.validation)."""

    # reject norm > factor x round median; null: off. 100: honest norms spread up to 39x the median
    # once some clients converge (measured: scripts/norm_spread.py, docs/guide/reliability.md)
    norm_factor: float | None = Field(default=100.0, gt=1,
                                      description="Reject an update whose L2 norm exceeds this x the round's median "
                                                  "norm; null: off. 100: honest norms spread up to 39x the median "
                                                  "once some clients converge.")
    # absolute bound on an update's L2 norm
    max_norm: float | None = Field(default=None, gt=0,
                                   description="Absolute bound on an update's L2 norm; null: none.")
    # uploads needed before the median rule applies
    min_for_median: int = Field(default=3, ge=2,
                                description="Uploads a round needs before the median rule applies.")


class FaultsConfig(_Section):
    """Faults the simulator injects around client updates (the algorithm never knows)."""

    # a selected client never answers
    drop_prob: float = Field(default=0.0, ge=0, le=1,
                             description="Probability that a selected client never answers.")
    # a client crashes mid-training: work lost
    crash_prob: float = Field(default=0.0, ge=0, le=1,
                              description="Probability that a client crashes mid-training: compute spent, new state "
                                          "and upload lost.")
    # a client is slow this round
    straggler_prob: float = Field(default=0.0, ge=0, le=1,
                                  description="Probability that a client is slow this round.")
    # a straggler takes U(1, slowdown) x normal time
    straggler_slowdown: float = Field(default=4.0, ge=1,
                                      description="A straggler takes U(1, straggler_slowdown) x a normal client's "
                                                  "time.")
    # round deadline in normal client times; null: wait
    deadline: float | None = Field(default=None, ge=1,
                                   description="Round deadline in normal client times; later uploads miss the round "
                                               "(the client keeps its trained state). null: wait for all.")
    # send NaN values
    nan_clients: list[int] = Field(default_factory=list,
                                   description="Client ids that send a NaN.")
    # send a tensor of the wrong shape
    wrong_shape_clients: list[int] = Field(default_factory=list,
                                           description="Client ids that send a tensor of the wrong shape.")
    # send a tensor twice the expected size
    oversized_clients: list[int] = Field(default_factory=list,
                                         description="Client ids that send a tensor twice the expected size.")
    # model poisoning: update scaled by scale_factor
    scale_clients: list[int] = Field(default_factory=list,
                                     description="Model-poisoning attackers: their update is multiplied by "
                                                 "scale_factor.")
    scale_factor: float = Field(default=50.0, description="Factor of the scale_clients' updates.")

    @field_validator("nan_clients", "wrong_shape_clients", "oversized_clients", "scale_clients")
    @classmethod
    def _client_ids(cls, value: list[int]) -> list[int]:
        if any(k < 0 for k in value):
            raise ValueError("client ids must be >= 0")
        return value

    @property
    def any(self) -> bool:
        return bool(self.drop_prob or self.crash_prob or self.straggler_prob or self.nan_clients
                    or self.wrong_shape_clients or self.oversized_clients or self.scale_clients)


# --- end reliability ------------------------------------------------------------------------------
class SecAggConfig(_Section):
    """Secure aggregation on Flower with Flower's own SecAgg+ (``secaggplus_mod`` + ``SecAggPlusWorkflow``):
    the server only learns the sum of the masked, quantised updates (pfedlora.federation.flower.secagg)."""

    enabled: bool = Field(default=False,
                          description="Run every training round through SecAgg+: the server learns only the sum of "
                                      "the masked updates.")
    # shares each client's secrets are split into: an int (> 2), or a fraction of the round's clients
    num_shares: int | float = Field(default=1.0, gt=0,
                                    description="Shares per secret: an int > 2, or a fraction of the round's "
                                                "clients (1.0: everyone).")
    # shares needed to rebuild a secret: an int, or a fraction of num_shares; a round survives as
    # long as every client keeps at least this many live neighbours
    reconstruction_threshold: int | float = Field(default=0.67, gt=0,
                                                  description="Shares needed to rebuild a secret: an int, or a "
                                                              "fraction of num_shares; a round survives while every "
                                                              "client keeps this many live neighbours.")
    # every coordinate of a (weight-scaled) update is clamped to +-clipping_range before quantisation
    clipping_range: float = Field(default=8.0, gt=0,
                                  description="Every coordinate of a (weight-scaled) update is clamped to +-this "
                                              "before quantisation.")
    # quantisation levels over [-range, range]
    quantization_range: int = Field(default=2**22, ge=2, lt=2**32,
                                    description="Quantisation levels over [-clipping_range, clipping_range].")

    @model_validator(mode="after")
    def _workflow_rules(self) -> SecAggConfig:
        """SecAggPlusWorkflow's own rules, checked before a run starts instead of inside the ServerApp."""
        shares, threshold = self.num_shares, self.reconstruction_threshold
        if isinstance(shares, int) and shares == 2:
            raise ValueError("num_shares as an int must be > 2 (or a fraction of the round's clients, e.g. 1.0)")
        if isinstance(threshold, float) and threshold > 1:
            raise ValueError(f"reconstruction_threshold as a fraction must be <= 1, got {threshold}")
        if isinstance(shares, int) and isinstance(threshold, int) and shares > 2 and threshold >= shares:
            raise ValueError(f"reconstruction_threshold ({threshold}) must be < num_shares ({shares})")
        return self


class FlowerConfig(_Section):
    """Flower runtime (``pfedlora.federation.flower``): how long to wait and how many replies suffice."""

    # seconds to wait for a round's replies
    round_timeout: float = Field(default=600.0, gt=0,
                                 description="Seconds to wait for a round's (or an evaluation's) replies.")
    # seconds to wait for num_clients SuperNodes
    connect_timeout: float = Field(default=120.0, gt=0,
                                   description="Seconds to wait for num_clients SuperNodes at the start.")
    secagg: SecAggConfig = Field(default=SecAggConfig(),
                                 description="Secure aggregation with Flower's SecAgg+.")


# --- privacy: client-level differential privacy (pfedlora.federation.privacy) --------------------


class PrivacyConfig(_Section):
    """Client-level DP (DP-FedAvg): clip every update, add Gaussian noise, account epsilon at delta."""

    mode: Literal["off", "central", "local"] = Field(default="off",
                                                     description="off, central (clients clip, the server adds the "
                                                                 "noise) or local (every client clips and adds "
                                                                 "noise).")
    # L2 bound on each client's update (required when on)
    clip_norm: float | None = Field(default=None, gt=0,
                                    description="L2 bound C on each client's update upload - broadcast (required "
                                                "when on).")
    # noise std = noise_multiplier x clip_norm (on the sum: central; on every upload: local)
    noise_multiplier: float | None = Field(default=None, gt=0,
                                           description="sigma: noise std sigma x C on the sum (central) or on every "
                                                       "upload (local).")
    # default min(1e-5, num_clients^-1.5): well below 1/num_clients (pfedlora.federation.privacy.default_delta)
    delta: float | None = Field(default=None, gt=0, lt=1,
                                description="delta of the reported epsilon; null: min(1e-5, num_clients^-1.5), well "
                                            "below 1 / num_clients (a warning when set at or above it).")
    # set the noise multiplier so that epsilon after `rounds` rounds is this (instead of noise_multiplier)
    target_epsilon: float | None = Field(default=None, gt=0,
                                         description="Instead of noise_multiplier: the smallest sigma whose epsilon "
                                                     "after `rounds` rounds is at most this.")
    # dp-accounting's Renyi-DP or privacy-loss-distribution accountant
    accountant: Literal["rdp", "pld"] = Field(default="rdp",
                                              description="dp-accounting's Renyi-DP (rdp) or "
                                                          "privacy-loss-distribution (pld, tighter) accountant.")
    # where the DP noise and (central mode) the client sampling come from: "secure" (a ChaCha20 keystream
    # under a fresh OS key every draw; runs differ) or "seeded_insecure" (derived from `seed`, so anyone who knows the config
    # can regenerate it and remove it: NOT private; for tests and debugging only)
    noise_source: Literal["secure", "seeded_insecure"] = Field(
        default="secure", description="secure: DP noise and client sampling from a ChaCha20 keystream under a fresh "
                                      "OS key (runs differ); "
                                      "seeded_insecure: derived from the public seed, NOT private (tests only).")

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @model_validator(mode="after")
    def _complete(self) -> PrivacyConfig:
        if self.mode == "off":
            return self
        if self.clip_norm is None:
            raise ValueError(f"mode {self.mode} needs clip_norm (> 0), the L2 bound on each update")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ValueError(f"mode {self.mode} needs exactly one of noise_multiplier and "
                             "target_epsilon")
        return self


# --- speed: how the simulator executes (never what it computes) ----------------------------------


class EngineConfig(_Section):
    """Execution choices of the in-process simulator; results are the same within float tolerance."""

    # processes training, then evaluating, the round's clients in parallel (forked, one torch thread
    # each); 1: in-process.
    # "auto" (one per core) by default: 1.4-1.6x faster per round than 1 on 2 cores, idle or with one
    # core busy (benchmarks/README.md, "Defaults"); the numbers do not depend on it
    workers: int | Literal["auto"] = Field(default="auto",
                                           description="Processes training and evaluating a round's clients in "
                                                       "parallel (forked, one torch thread each); auto: one per "
                                                       "core; 1: in-process. "
                                                       "The numbers do not depend on it.")
    # torch intra-op threads of the run's own process (in-process training and evaluation). 1 by default:
    # with workers one thread per process is the fastest setting here, and 2 threads in one process run
    # 2.6-3.5x slower when another process holds a core (benchmarks/README.md, "Defaults"); it also
    # makes the numbers independent of engine.workers and of `--jobs`. "auto": torch's default (one per core)
    threads: int | Literal["auto"] = Field(default=1,
                                           description="Torch threads of the run's own process (in-process "
                                                       "training, evaluation); auto: torch's default. 1 keeps "
                                                       "results independent of workers and --jobs.")
    # where client states live between rounds: "memory", or "disk" (one file per client, for many clients)
    client_store: Literal["memory", "disk"] = Field(default="memory",
                                                    description="Where client states live between rounds: memory, "
                                                                "or disk (one file per client, for thousands of "
                                                                "clients).")
    # directory of the disk store; None: a temporary directory removed at exit
    store_dir: str | None = Field(default=None,
                                  description="Directory of the disk store; null: a temporary directory removed at "
                                              "exit.")
    # reuse the outputs of a frozen part when inputs are not augmented (exact; pFedLoRA's iterative steps)
    reuse_frozen: bool = Field(default=True,
                               description="pFedLoRA's iterative steps: compute the frozen part's outputs once per "
                                           "step (exact; off with augmentation).")
    # image models and batches in channels-last memory layout (faster CPU convolutions)
    channels_last: bool = Field(default=False,
                                description="Channels-last layout for CNNs and image batches (results drift at the "
                                            "float level).")

    @field_validator("workers", "threads")
    @classmethod
    def _positive(cls, value: int | str, info: Any) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"{info.field_name} must be >= 1 or 'auto'")
        return value

    def resolved_workers(self) -> int:
        import os

        return (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) \
            if self.workers == "auto" else int(self.workers)


# --- end speed -----------------------------------------------------------------------------------
# --- sweep: `pfedlora sweep` (a plain run ignores this section) ---------------------------------


class SweepConfig(_Section):
    """A grid of config values run by ``pfedlora sweep`` (see pfedlora.experiments.sweep)."""

    # dotted config key -> the values to try; the cartesian product, keys in declaration order.
    # Linked keys "a+b" vary together: values [[a1, b1], [a2, b2]] (e.g. num_clients+fraction)
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="Dotted config key -> the values to try (the cartesian product, "
                                                   "keys in order); linked keys a+b vary together: [[a1, b1], [a2, "
                                                   "b2]].")
    # or "all"
    algorithms: list[str] | str = Field(default_factory=lambda: ["pfedlora"],
                                        description="Algorithms to run at every grid point, or all (those a point "
                                                    "does not admit are skipped).")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="Seeds to run at every grid point.")
    # extra table columns: mean accuracy at these rounds (the last evaluated round <= each)
    rounds_of_interest: list[int] = Field(default_factory=list,
                                          description="Extra table columns: mean accuracy at these rounds (the last "
                                                      "evaluated round <= each).")

    @field_validator("grid")
    @classmethod
    def _grid_keys(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if any(part in ("algorithm", "seed", "sweep") or part.startswith("sweep.") for part in key.split("+")):
                raise ValueError(f"grid key {key!r} cannot be swept; use sweep.algorithms / sweep.seeds "
                                 "for algorithms and seeds")
            if not values:
                raise ValueError(f"grid key {key!r} needs a non-empty list of values")
            if "+" in key:  # linked keys vary together: every value is a list with one item per key
                width = len(key.split("+"))
                if any(not isinstance(v, list) or len(v) != width for v in values):
                    raise ValueError(f"linked grid key {key!r} needs values that are lists of {width} items, "
                                     f"one per key (e.g. [[100, 0.1], [1000, 0.01]])")
        return value

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("algorithms needs at least one algorithm (or 'all')")
            for name in value:
                if name not in registry.names():
                    raise ValueError(f"unknown algorithm {name!r}; valid: all, {', '.join(registry.names())}")
            return list(dict.fromkeys(value))
        if value != "all":
            raise ValueError("expected a list of algorithms or 'all'")
        return value

    @field_validator("seeds", "rounds_of_interest")
    @classmethod
    def _unique(cls, value: list[int]) -> list[int]:
        return list(dict.fromkeys(value))

    @field_validator("rounds_of_interest")
    @classmethod
    def _positive_rounds(cls, value: list[int]) -> list[int]:
        if any(r < 1 for r in value):
            raise ValueError("rounds must be >= 1")
        return value


# --- end sweep -----------------------------------------------------------------------------------
# --- tracking: experiment trackers as sinks (pfedlora.metrics.tracking); not part of a run's identity ---

TRACKING_SINKS = ("tensorboard", "mlflow")
# the package each sink needs (all in the `tracking` extra)
TRACKING_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


class TrackingConfig(_Section):
    """Where a run's metrics go besides metrics.csv: TensorBoard and MLflow (``pip install 'pfedlora[tracking]'``).

    ``tracking: [tensorboard, mlflow]`` is short for ``tracking: {sinks: [tensorboard, mlflow]}``."""

    sinks: list[Literal["tensorboard", "mlflow"]] = Field(
        default_factory=list, description="Trackers every evaluated round is logged to: tensorboard (event files "
                                          "in the run directory), mlflow; [] (default): none.")
    mlflow_uri: str | None = Field(default=None,
                                   description="MLflow tracking URI (sqlite:///mlflow.db, http://host:5000); null: "
                                               "$MLFLOW_TRACKING_URI, else MLflow's default (./mlflow.db).")
    experiment: str | None = Field(default=None,
                                   description="MLflow experiment; null: $MLFLOW_EXPERIMENT_NAME, else pfedlora "
                                               "(compare and sweep: their output folder's name).")
    run_name: str | None = Field(default=None,
                                 description="MLflow run name; null: the run directory's name (compare and sweep: "
                                             "algorithm, seed and grid point).")
    parent_run_id: str | None = Field(default=None,
                                      description="MLflow run the run is nested under; compare and sweep set it to "
                                                  "their parent run.")

    @model_validator(mode="before")
    @classmethod
    def _list_shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = [data]
        return {"sinks": data} if isinstance(data, list) else data

    @field_validator("sinks")
    @classmethod
    def _installed(cls, value: list[str]) -> list[str]:
        import importlib.util

        for sink in dict.fromkeys(value):
            if importlib.util.find_spec(TRACKING_PACKAGES[sink]) is None:
                raise ValueError(f"{sink} needs the {TRACKING_PACKAGES[sink]} package: pip install 'pfedlora[tracking]'")
        return list(dict.fromkeys(value))


# --- end tracking --------------------------------------------------------------------------------
DEFAULT_POOL = ["cnn1", "cnn2", "cnn3", "cnn4", "cnn5"]
# the 10-architecture pool of open question 4: CNN-1..5 and five genuinely different models
POOL_10 = [*DEFAULT_POOL, "cnn_wide", "cnn_deep", "vgg_s", "resnet8", "mobilenet_s"]

# `pfedlora run` without --config: the digits quickstart. Digits clients hold ~135 images, so the
# authors' CIFAR batch of 512 would give one step per epoch; the quickstart uses batches of 32.
QUICKSTART: dict[str, Any] = {"rounds": 15, "train": {"batch_size": 32}}


class Config(_Section):
    """The whole configuration of a run.

    Defaults: the authors' training setup, and the quickstart federation (digits, 10 clients,
    cnn1..cnn5, pathological 2 classes per client).

    Each algorithm's own settings are a section named after it (pFedLoRA's: ``adapter``), declared in
    the algorithm's module and validated through :mod:`pfedlora.registry`; they are pydantic extras
    here, reached as attributes (``config.fd.gamma``) or ``config.settings`` for the chosen one.
    """

    # extras are the algorithm sections; `_algorithm_sections` refuses any other unknown key
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    algorithm: str = Field(default="pfedlora",
                           # the list is the registry's, so the config reference cannot drift from it
                           description=f"The algorithm: a built-in ({', '.join(registry.BUILTIN_MODULES)}) or an "
                                       "installed plugin's name.")
    seed: int = Field(default=0,
                      description="Seeds partition, model init, client sampling and batches; the same config and "
                                  "seed give the same numbers.")
    rounds: int = Field(default=30, ge=1, description="Communication rounds (the quickstart runs 15).")
    num_clients: int = Field(default=10, ge=1,
                             description="Clients in the federation; with partition.kind given it must equal the "
                                         "number of clients the data names.")
    fraction: float = Field(default=1.0, gt=0, le=1,
                            description="Fraction of clients selected per round: max(1, round(fraction x "
                                        "num_clients)).")
    eval_every: int = Field(default=1, ge=1,
                            description="Evaluate every client every N rounds (and after the last round).")
    device: Literal["auto", "cpu", "cuda"] = Field(default="cpu",
                                                   description="Where training runs: cpu, cuda, or auto (the GPU "
                                                               "when one is visible).")
    dataset: DatasetConfig = Field(default=DatasetConfig(),
                                   description="What data the run reads and how (built-in datasets and your own "
                                               "data).")
    partition: PartitionConfig = Field(default=PartitionConfig(),
                                       description="How the training data is split into clients.")
    model_pool: list[str] = Field(default_factory=lambda: list(DEFAULT_POOL), min_length=1,
                                  description="Architectures assigned round-robin: client k gets model_pool[k % "
                                              "len]. Images: cnn1..cnn5, cnn_wide, cnn_deep, vgg_s, resnet8, "
                                              "mobilenet_s; text: minilm_l{2,3,4,6}, tf_d64_l2, tf_d128_l{2,4}.")
    client_models: list[str] | None = Field(default=None,
                                            description="Explicit per-client architectures (length num_clients), "
                                                        "instead of model_pool.")
    # HtFLlib's families by name (pfedlora.models.families); written only when set, so earlier configs stay the same
    model_family: str | None = Field(default=None,
                                     description="An HtFLlib model family (HtFE-img-8, HtM-img-10, HtFE-txt-6, ...): "
                                                 "client i gets member i mod k; it sets model_pool "
                                                 "(docs/guide/models.md).")
    feature_dim: int = Field(default=512, ge=1, le=65536,
                             description="model_family: the members' shared representation width (HtFLlib's "
                                         "feature_dim).")
    train: TrainConfig = Field(default=TrainConfig(),
                               description="Local training, the same loop for every algorithm.")
    # reliability
    # rounds between checkpoints; 0: only on signals
    checkpoint_every: int = Field(default=1, ge=0,
                                  description="Rounds between checkpoints of the whole federation state; 0: only "
                                              "when stopped by a signal (and always after the last round).")
    # fewer valid updates: the global state is kept
    min_clients: int = Field(default=1, ge=1,
                             description="Valid updates a round needs to change the global state; fewer and the "
                                         "previous global state is kept.")
    validation: ValidationConfig = Field(default=ValidationConfig(),
                                         description="Server-side checks on every upload.")
    faults: FaultsConfig = Field(default=FaultsConfig(),
                                 description="Faults the simulator injects around client updates (reproducible from "
                                             "the seed).")
    flower: FlowerConfig = Field(default=FlowerConfig(),
                                 description="The Flower runtime: timeouts and SecAgg+.")
    privacy: PrivacyConfig = Field(default=PrivacyConfig(),
                                   description="Client-level differential privacy (DP-FedAvg).")
    engine: EngineConfig = Field(default=EngineConfig(),
                                 description="How the in-process simulator executes a round (never what it "
                                             "computes).")
    # --- costs (pfedlora.metrics.costs) ---
    # dtype of floating tensors in every payload sent, both directions
    payload_dtype: Literal["float32", "float16", "bfloat16"] = Field(default="float32",
                                                                     description="Wire dtype of floating tensors in "
                                                                                 "every payload, both directions "
                                                                                 "(integer tensors keep theirs).")
    # mean accuracy (percent) for time-to-target in summary.json; None: not reported
    target_accuracy: float | None = Field(default=None, gt=0, le=100,
                                          description="Mean accuracy (percent) for time_to_target in summary.json "
                                                      "and for compare; null: not reported.")
    # --- sweep (pfedlora.experiments.sweep); not part of a run's identity, so not in to_dict() ---
    sweep: SweepConfig = Field(default=SweepConfig(),
                               description="pfedlora sweep only: the grid of config values; a plain run ignores it "
                                           "and leaves it out of config.yaml.")
    # where metrics go besides metrics.csv; like sweep, not part of a run's identity (nor of config.yaml):
    # the run directory's tracking.json keeps it for --resume
    tracking: TrackingConfig = Field(default=TrackingConfig(),
                                     description="Experiment trackers (TensorBoard, MLflow) every evaluated round is "
                                                 "logged to; not part of config.yaml (kept in tracking.json).")

    @model_validator(mode="before")
    @classmethod
    def _algorithm_sections(cls, data: Any) -> Any:
        """Validate every algorithm settings section through the registry (each algorithm module owns
        its settings): the sections always written, the chosen algorithm's, and any other given one."""
        if not isinstance(data, dict):
            return data
        given = [key for key in data if key not in cls.model_fields]
        algorithm = data.get("algorithm", cls.model_fields["algorithm"].default)
        if not isinstance(algorithm, str) or algorithm not in registry.names():
            algorithm = cls.model_fields["algorithm"].default  # the field validator reports it
        sections = registry.settings_sections(algorithm, given)
        # every built-in's settings (defaults unless given) stay readable as attributes, so code asking
        # for another algorithm's settings (e.g. whether it averages uploads) works on any config;
        # only the sections a run carries are written (to_dict)
        for registration in registry.builtins():
            if registration.settings is not None:
                sections.setdefault(registration.section, registration.settings)
        unknown = [key for key in given if key not in sections]
        if unknown:
            valid = ", ".join([*(k for k in cls.model_fields if k != "sweep"), *sections, "sweep"])
            raise ValueError(f"unknown key {unknown[0]!r}; valid keys here: {valid}")
        data = dict(data)
        for section, model in sections.items():
            value = data.get(section, {})
            if isinstance(value, model):
                continue
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ValueError(f"{section}: expected a mapping of keys (valid keys: {', '.join(model.model_fields)}), "
                                 f"got {value!r}")
            try:
                data[section] = model.model_validate(value)
            except ValidationError as exc:
                raise ValueError(_describe(exc, model, prefix=section)) from None
        return data

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, value: str) -> str:
        if value not in registry.names():
            raise ValueError(f"unknown algorithm {value!r}; valid: {', '.join(registry.names())}")
        return value

    def algorithm_sections(self) -> dict[str, BaseModel]:
        """The algorithm settings sections this config carries and writes (section name -> settings):
        those every config so far carried and the chosen algorithm's. Another algorithm's section is
        checked and readable (``config.fedtgp``) but not written: it cannot change this run, so one
        document can hold every algorithm's tuned settings without changing finished runs' identity."""
        carried = registry.settings_sections(self.algorithm, [])
        return {key: value for key, value in (self.__pydantic_extra__ or {}).items() if key in carried}

    @property
    def settings(self) -> BaseModel | None:
        """The chosen algorithm's own settings (None for an algorithm without settings)."""
        section = registry.get(self.algorithm).section
        return None if section is None else self.algorithm_sections()[section]

    @field_validator("model_pool", "client_models")
    @classmethod
    def _known_models(cls, value: list[str] | None) -> list[str] | None:
        from pfedlora.models.registry import known_model

        for name in value or []:
            known_model(name)
        return value

    @model_validator(mode="before")
    @classmethod
    def _family_pool(cls, data: Any) -> Any:
        """``model_family`` names the pool (HtFLlib's assignment: client i gets member i mod k)."""
        if not isinstance(data, dict):
            return data
        family, dim = data.get("model_family"), data.get("feature_dim", 512)
        if family is None:
            if dim != 512:
                raise ValueError("feature_dim applies to a model_family; set model_family or remove feature_dim")
            return data
        from pfedlora.models.families import family_names, family_pool

        if family not in family_names():
            raise ValueError(f"unknown model_family {family!r}; valid: {', '.join(family_names())}")
        if type(dim) is not int or dim < 1:
            return data  # the field reports it
        pool = family_pool(family, dim)
        if data.get("client_models") is not None:
            raise ValueError(f"model_family {family} assigns the clients' models; remove client_models")
        if data.get("model_pool") not in (None, pool):  # null: a config's own pool cleared with --set model_pool=null
            raise ValueError(f"model_family {family} sets model_pool ({', '.join(pool)}); remove model_pool "
                             "(or --set model_pool=null)")
        return {**data, "model_pool": pool}

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        if self.client_models is not None and len(self.client_models) != self.num_clients:
            raise ValueError(
                f"client_models has {len(self.client_models)} entries but num_clients is {self.num_clients}"
            )
        attackers = (self.faults.nan_clients + self.faults.wrong_shape_clients + self.faults.oversized_clients
                     + self.faults.scale_clients)
        if any(k >= self.num_clients for k in attackers):
            raise ValueError(f"faults: client ids must be < num_clients ({self.num_clients}), got {max(attackers)}")
        per_round = max(1, round(self.fraction * self.num_clients))
        if self.rounds * per_round > MAX_CLIENT_ROUNDS:
            raise ValueError(f"rounds={self.rounds} x {per_round} clients per round exceeds {MAX_CLIENT_ROUNDS:.0e} "
                             f"client-rounds; accepted: rounds up to {MAX_CLIENT_ROUNDS // per_round} at this "
                             "num_clients and fraction")
        self._given_consistent()
        self._text_consistent()
        registry.check_config(self)  # the chosen algorithm's own cross-section rules
        return self

    def _given_consistent(self) -> None:
        """partition.kind given takes clients from the data: only some datasets name them, and the
        other partition keys (and seeded subsampling, which would cut clients) do not apply."""
        data, partition = self.dataset, self.partition
        if partition.kind != "given":
            if data.name in GIVEN_DATASETS:
                raise ValueError(f"dataset.name {data.name} is partitioned by its files; set partition.kind given")
            if data.client_column is not None:
                raise ValueError("dataset.client_column applies to partition.kind given; set partition.kind given "
                                 "or remove dataset.client_column")
            return
        if data.name not in GIVEN_DATASETS and not (data.name in COLUMN_DATASETS and data.client_column):
            raise ValueError(f"partition.kind given needs data that names each sample's client: dataset.name "
                             f"{', '.join(GIVEN_DATASETS)}, or {' / '.join(COLUMN_DATASETS)} with dataset.client_column "
                             f"(got dataset.name {data.name})")
        defaults = PartitionConfig()
        changed = [key for key in PartitionConfig.model_fields
                   if key != "kind" and getattr(partition, key) != getattr(defaults, key)]
        if changed:
            raise ValueError(f"partition.kind given takes the clients from the data; remove partition.{changed[0]}")
        for key in ("max_train_samples", "max_test_samples"):
            if getattr(data, key) is not None:
                raise ValueError(f"dataset.{key} does not apply to partition.kind given (it would cut clients' "
                                 "data unevenly); remove it")

    def _text_consistent(self) -> None:
        """Text datasets need text models (and vice versa)."""
        from pfedlora.data.text import TEXT_DATASETS
        from pfedlora.models.registry import is_text_model
        from pfedlora.models.text import TEXT_MODEL_SPECS

        archs = list(dict.fromkeys(self.model_pool + (self.client_models or [])))
        is_text = self.dataset.name in TEXT_DATASETS
        # images or text of DATA_DEFINED_DATASETS is known once the data is read (build_model refuses then)
        wrong = [] if self.dataset.name in DATA_DEFINED_DATASETS else \
            [a for a in archs if is_text_model(a) != is_text]
        if wrong:
            kind = "text" if is_text else "image"
            from pfedlora.models.registry import MODEL_BUILDERS

            valid = sorted(TEXT_MODEL_SPECS) if is_text else sorted(MODEL_BUILDERS)
            raise ValueError(f"model {wrong[0]!r} does not fit the {kind} dataset {self.dataset.name!r}; valid: {', '.join(valid)}")
        if is_text and self.dataset.augment:
            raise ValueError("dataset.augment (random crop + flip) is for image datasets; set it to false for text")

    def client_model(self, client_id: int) -> str:
        """The local model architecture of client ``client_id``."""
        if self.client_models is not None:
            return self.client_models[client_id]
        return self.model_pool[client_id % len(self.model_pool)]

    def to_dict(self) -> dict[str, Any]:
        # a run ignores the sweep section: leaving it out keeps config.yaml (and run reuse) independent of it.
        # privacy and flower.secagg are left out while off, so configs (and checkpoint hashes, reused
        # comparison runs) from before they existed stay the same
        exclude: dict[str, Any] = {"sweep": True, "tracking": True}
        if self.privacy.mode == "off":
            exclude["privacy"] = True
        if not self.flower.secagg.enabled:
            exclude["flower"] = {"secagg"}
        if self.model_family is None:
            exclude |= {"model_family": True, "feature_dim": True}
        document = self.model_dump(mode="json", exclude=exclude)
        # algorithm sections (pydantic extras, dumped last) go after `train`, where `adapter` always was
        sections = {key: document.pop(key) for key in self.algorithm_sections()}
        for key in self.__pydantic_extra__ or {}:
            document.pop(key, None)  # another algorithm's settings: not part of this run
        ordered: dict[str, Any] = {}
        for key, value in document.items():
            ordered[key] = value
            if key == "train":
                ordered.update(sections)
        return ordered


def _format_error(error: ValidationError) -> str:
    return "config: " + _describe(error, Config)


def _describe(error: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """The first error as one line naming the key (``prefix.`` before it) and what is accepted."""
    first = error.errors()[0]
    location = ".".join([*([prefix] if prefix else []), *(str(part) for part in first["loc"])])
    if first["type"] == "extra_forbidden":
        section = _section_for(root, first["loc"][:-1])
        valid = ", ".join(section.model_fields) if section is not None else "?"
        return f"unknown key {location!r}; valid keys here: {valid}"
    message = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    suffix = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
    return f"{location}: {message}{suffix}" if location else f"{message}{suffix}"


def _section_for(root: type[BaseModel], location: tuple) -> type[BaseModel] | None:
    model = root
    for part in location:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def set_by_path(document: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a nested dict, creating sections as needed."""
    *parents, leaf = dotted_key.split(".")
    node = document
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"config: cannot set {dotted_key!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as YAML (so 0.1 is a float, [a, b] a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE (e.g. adapter.rank=8), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_document(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"config file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {str(path)!r} is not UTF-8 text (a YAML config is expected)") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise UserError(f"config file {str(path)!r} must be a YAML mapping of keys, got {type(document).__name__}")
    return document


# rounds x clients per round: the client draws a run precomputes (participation, local-DP accounting)
# and its per-round tables; far beyond any run that could finish, so a typo is refused before it hangs
MAX_CLIENT_ROUNDS = 10**8


def check_known_sizes(document: dict[str, Any]) -> None:
    """Refuse, from the raw document and before validation (which imports the algorithms, and torch),
    a federation a built-in dataset cannot fill: a typo such as num_clients 387682504 must exit in a
    second, not after the imports and the data. The same rules run again on the loaded data
    (pfedlora.data.partition.check_partition_sizes); here only what is known without it."""
    data = document.get("dataset", {})
    partition = document.get("partition", {})
    if not isinstance(data, dict) or not isinstance(partition, dict):
        return  # validation reports it
    name = data.get("name", "digits")
    num_clients = document.get("num_clients", Config.model_fields["num_clients"].default)
    if name not in KNOWN_TRAIN_SAMPLES or type(num_clients) is not int:
        return
    num_train = KNOWN_TRAIN_SAMPLES[name]
    if type(data.get("max_train_samples")) is int and data["max_train_samples"] >= 1:
        num_train = min(num_train, data["max_train_samples"])
    kind = partition.get("kind", "pathological")
    per_client = partition.get("classes_per_client")
    if type(per_client) is not int:
        per_client = None
    from pfedlora.data.partition import check_partition_sizes  # numpy only: no torch

    check_partition_sizes(num_train, KNOWN_CLASSES[name], num_clients, kind, per_client)


def build_config(document: dict[str, Any] | None = None, overrides: list[str] | None = None) -> Config:
    """Validate ``document`` with ``KEY=VALUE`` overrides applied; raises UserError on bad input.
    ``document`` is not modified (overrides go into a deep copy: a caller's nested sections stay theirs)."""
    document = copy.deepcopy(document or {})
    if not isinstance(document, dict):
        raise UserError(f"config must be a mapping of keys, got {type(document).__name__}")
    for text in overrides or []:
        key, value = parse_override(text)
        set_by_path(document, key, value)
    check_known_sizes(document)
    try:
        return Config.model_validate(document)
    except ValidationError as exc:
        raise UserError(_format_error(exc)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config file (or the quickstart when ``path`` is None) plus overrides."""
    document = load_document(path) if path is not None else copy.deepcopy(QUICKSTART)
    return build_config(document, overrides)
