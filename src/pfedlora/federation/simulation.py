"""The in-process federated simulator.

It owns the loop (sample clients, run their updates, aggregate, evaluate, log) and moves payloads
between the algorithm's functions; it never names an algorithm. Randomness is derived from
(seed, round, client) so results do not depend on the order clients are processed in.

Reliability: faults from ``config.faults`` are injected around ``client_update``
(:mod:`~pfedlora.federation.faults`); every upload passes the server's validator
(:mod:`~pfedlora.federation.validation`) before aggregation; the whole federation state is
checkpointed every ``checkpoint_every`` rounds (:mod:`~pfedlora.federation.checkpoint`) and
:func:`resume` continues from it; SIGINT/SIGTERM stop the run cleanly at a round boundary.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfedlora.algorithms import get_algorithm
from pfedlora.algorithms.base import Algorithm, ClientData, ClientResult, FederationContext, Payload, State, Upload, derive_seed
from pfedlora.config import Config, load_config
from pfedlora.errors import RunInterrupted, UserError
from pfedlora.data import load_dataset, partition_clients, partition_counts
from pfedlora.data.datasets import ArrayDataset
from pfedlora.data.augment import random_crop_flip
from pfedlora.data.client_data import given_splits
from pfedlora.data.noise import corrupt_labels
from pfedlora.federation.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from pfedlora.federation.faults import client_fate, corrupt_upload
from pfedlora.federation.footprint import check_client_memory, forward_flops_per_sample
from pfedlora.federation.parallel import WorkerDied
from pfedlora.federation.preflight import check_run
from pfedlora.federation.privacy import Privacy, privacy_warnings
from pfedlora.federation.sampling import sample_clients
from pfedlora.federation.validation import Rejection, UpdateValidator, all_finite
from pfedlora.federation.payload import transmit
from pfedlora.metrics.accuracy import accuracy, diagnostics_summary, mean_metrics, run_summary, summarize
from pfedlora.metrics.costs import CostMeter, time_to_target
from pfedlora.metrics.flops import count_server_flops, evaluation_flops, forward_flops
from pfedlora.metrics.run_dir import MetricsWriter, prepare_run_dir, write_json, write_yaml
from pfedlora.metrics.tracking import open_trackers


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def participation(config: Config, client_accuracies: list[float], ever_selected: set[int] | None = None) -> dict[str, Any]:
    """How many clients were ever selected, and their final mean accuracy: with partial participation
    (e.g. 1% of 1,000 clients per round) many clients never train within the rounds run.
    ``ever_selected``: the clients the run selected (a secret sample cannot be recomputed)."""
    if ever_selected is None:
        ever_selected = set().union(*(sample_clients(config, r) for r in range(1, config.rounds + 1)))
    selected = sorted(ever_selected)
    accuracies = [client_accuracies[k] for k in selected if client_accuracies[k] is not None] \
        if len(client_accuracies) == config.num_clients else []
    return {"clients_ever_selected": len(selected),
            "selected_clients_final_accuracy": sum(accuracies) / len(accuracies) if accuracies else None}


def client_generator(config: Config, round_index: int, client_id: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(config.seed, "train", round_index, client_id))


@dataclass
class Federation:
    """Everything a runtime needs for one configured federation, built once."""

    config: Config
    dataset: ArrayDataset
    clients: list[ClientData]
    context: FederationContext
    algorithm: Algorithm
    partition: dict[str, Any]
    # client-level DP (pfedlora.federation.privacy); mode off: uploads and aggregation untouched
    privacy: Privacy = field(default_factory=lambda: Privacy("off", 0.0, 0.0, 0.0, 0))

    @classmethod
    def build(cls, config: Config) -> Federation:
        device = resolve_device(config.device)
        dataset = load_dataset(
            config.dataset.name,
            config.dataset.path,
            cache_dir=config.dataset.cache_dir,
            download=config.dataset.download,
            seed=config.seed,
            tokenizer=config.dataset.tokenizer,
            max_length=config.dataset.max_length,
            max_train_samples=config.dataset.max_train_samples,
            max_test_samples=config.dataset.max_test_samples,
            options=config.dataset,
        )
        # partition.kind given: the data names each sample's client (pfedlora.data.client_data)
        splits = given_splits(dataset, config.num_clients) if config.partition.kind == "given" else partition_clients(
            dataset.train_y.numpy(),
            dataset.test_y.numpy(),
            dataset.num_classes,
            config.num_clients,
            kind=config.partition.kind,
            classes_per_client=config.partition.classes_per_client,
            alpha=config.partition.alpha,
            share_low=config.partition.share_low,
            share_high=config.partition.share_high,
            min_samples=config.partition.min_samples,
            size_skew=config.partition.size_skew,
            seed=config.seed,
        )
        clients = [client_data(config, dataset, k, split, device) for k, split in enumerate(splits)]
        context = FederationContext(config, dataset.input_shape, dataset.num_classes, device,
                                    text=dataset.text)
        counts = partition_counts(splits, dataset.train_y.numpy(), dataset.test_y.numpy(), dataset.num_classes)
        if dataset.clients is not None:  # client k of the run is the data's client client_names[k]
            counts |= {"kind": "given", "source": dataset.clients.source, "client_names": dataset.clients.names}
        return cls(config, dataset, clients, context, get_algorithm(config.algorithm), counts,
                   Privacy.from_config(config))

    def forward_flops(self) -> dict[str, int]:
        """Every local model architecture in use -> FLOPs of one forward pass on one training sample."""
        archs = sorted({self.context.client_arch(k) for k in range(self.config.num_clients)})
        models = {arch: self.context.cached_module(("model", arch), lambda a=arch: self.context.new_model(a, seed=0))
                  for arch in archs}
        sample = next((c.train_x[:1] for c in self.clients if c.num_train), self.dataset.normalize(self.dataset.test_x[:1]))
        return forward_flops_per_sample(models, sample)

    def check_memory(self) -> list[str]:
        """Header lines on the clients' resident states; UserError when the memory store cannot hold them."""
        archs = [self.context.client_arch(k) for k in range(self.config.num_clients)]
        return check_client_memory(self.config.engine.client_store, self.context.device, archs,
                                   lambda k: self.algorithm.init_client(self.context, k))

    def parameter_counts(self) -> dict[str, Any]:
        """Parameters of every local model architecture in use, plus the algorithm's own facts."""
        archs = sorted({self.context.client_arch(k) for k in range(self.config.num_clients)})
        facts = {"local_model_parameters": {arch: self.context.model_parameters(arch) for arch in archs}}
        facts.update(self.algorithm.describe(self.context))
        return facts


def client_data(config: Config, dataset: ArrayDataset, client_id: int, split, device: torch.device) -> ClientData:
    """A client's tensors: its training split (labels noised if configured) and its evaluation split.

    With ``dataset.validation_fraction`` > 0 the evaluation split is carved from the client's own
    training data (never the test split), so hyper-parameters can be tuned without touching test.
    """
    train_idx, eval_x, eval_y = np.asarray(split.train_idx), dataset.test_x, dataset.test_y
    eval_idx = np.asarray(split.test_idx)
    fraction = config.dataset.validation_fraction
    if fraction > 0:
        shuffled = np.random.default_rng(derive_seed(config.seed, "validation", client_id)).permutation(train_idx)
        cut = max(1, int(round(fraction * len(shuffled))))
        eval_idx, train_idx = np.sort(shuffled[:cut]), np.sort(shuffled[cut:])
        eval_x, eval_y = dataset.train_x, dataset.train_y
    train_y = dataset.train_y[torch.as_tensor(train_idx, dtype=torch.long)]
    if config.dataset.label_noise > 0:
        rng = np.random.default_rng(derive_seed(config.seed, "label-noise", client_id))
        noisy, _ = corrupt_labels(train_y.numpy(), dataset.num_classes, config.dataset.label_noise,
                                  config.dataset.noise_kind, rng)
        train_y = torch.as_tensor(noisy)
    raw_eval = dataset.mean is not None  # evaluation rows stay uint8, normalised per batch

    def layout(x: torch.Tensor) -> torch.Tensor:
        if config.engine.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    return ClientData(
        train_x=layout(dataset.normalize(dataset.train_x[torch.as_tensor(train_idx, dtype=torch.long)]).to(device)),
        train_y=train_y.to(device),
        test_x=eval_x[torch.as_tensor(eval_idx, dtype=torch.long)].to(device) if raw_eval else
        layout(eval_x[torch.as_tensor(eval_idx, dtype=torch.long)].to(device)),
        test_y=eval_y[torch.as_tensor(eval_idx, dtype=torch.long)].to(device),
        augment=random_crop_flip if config.dataset.augment else None,
        normalize=(lambda rows: layout(dataset.normalize(rows))) if raw_eval else None,
    )


class ClientStore:
    """Client states by id, created lazily by the algorithm's ``init_client``.

    With ``engine.client_store: disk`` a state lives in one file per client (written atomically)
    instead of in memory, so a federation of thousands of clients needs the memory of a few; a
    client never updated is not stored at all (its initial state is a function of the seed).
    """

    def __init__(self, federation: Federation) -> None:
        self._federation = federation
        self._states: dict[int, State] = {}
        engine = federation.config.engine
        self.directory: Path | None = None
        if engine.client_store == "disk":
            if engine.store_dir is not None:
                self.directory = Path(engine.store_dir)
                self.directory.mkdir(parents=True, exist_ok=True)
            else:
                self.directory = Path(tempfile.mkdtemp(prefix="pfedlora-clients-"))
                weakref.finalize(self, shutil.rmtree, str(self.directory), True)

    def _path(self, client_id: int) -> Path:
        assert self.directory is not None
        return self.directory / f"client-{client_id}.pt"

    def get(self, client_id: int) -> State:
        if self.directory is not None:
            path = self._path(client_id)
            if path.is_file():
                return torch.load(path, map_location=self._federation.context.device, weights_only=True)
            fed = self._federation
            return fed.algorithm.init_client(fed.context, client_id)
        if client_id not in self._states:
            fed = self._federation
            self._states[client_id] = fed.algorithm.init_client(fed.context, client_id)
        return self._states[client_id]

    def put(self, client_id: int, state: State) -> None:
        if self.directory is None:
            self._states[client_id] = state
            return
        path = self._path(client_id)
        partial = path.with_name(path.name + ".partial")
        torch.save(state, partial)
        os.replace(partial, path)  # a crash never leaves a half-written state behind

    def states(self) -> dict[int, State]:
        """Every client state created so far (for checkpoints)."""
        if self.directory is None:
            return dict(self._states)
        ids = sorted(int(p.stem.removeprefix("client-")) for p in self.directory.glob("client-*.pt"))
        return {k: self.get(k) for k in ids}


@dataclass
class RoundResult:
    round: int
    selected: list[int]
    uploads: list[Upload]  # the accepted (aggregated) uploads
    train_loss: float
    stats: dict[int, list] = field(default_factory=dict)
    # reliability: updates expected (selected), received (not dropped/crashed/late), rejected
    expected: int = 0
    received: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    aggregated: bool = True  # False: too few valid updates (or a non-finite result), state kept
    # costs (pfedlora.metrics.costs): wire bytes over all selected clients, server FLOPs
    up_bytes: int = 0
    down_bytes: int = 0
    server_flops: int = 0


def run_round(federation: Federation, store: ClientStore, server_state: State, broadcast: Payload,
              round_index: int, *, validator: UpdateValidator | None = None,
              log: Callable[[str], None] | None = None) -> tuple[State, Payload, RoundResult]:
    """One round: selected clients update from ``broadcast``; the server validates their uploads
    and aggregates the valid ones (faults from ``config.faults`` are injected around the clients)."""
    algorithm, ctx, config = federation.algorithm, federation.context, federation.config
    faults = config.faults
    if validator is None:
        validator = validator_for(config)
    selected = sample_clients(config, round_index)
    received: list[Upload] = []
    losses: list[float] = []
    stats: dict[int, list] = {}
    # every payload really goes through the wire format (payload_dtype), both directions
    received_broadcast, broadcast_bytes = transmit(broadcast, config.payload_dtype)
    up_bytes = 0
    fates = {client_id: client_fate(faults, config.seed, round_index, client_id) for client_id in selected}
    # a client without training samples has nothing to train on or report (logged once per run)
    working = [client_id for client_id in selected
               if not fates[client_id].dropped and federation.clients[client_id].num_train > 0]
    results = train_clients(federation, store, received_broadcast, round_index, working)
    for client_id in working:
        fate, result = fates[client_id], results[client_id]
        if fate.crashed:  # the work is lost with the client's process
            continue
        store.put(client_id, result.state)
        stats[client_id] = result.stats
        losses.extend(s.mean_loss for s in result.stats if s.num_steps)
        if fate.late:
            continue
        # DP: the client clips (and in local mode noises) its update against the broadcast it received
        private = federation.privacy.client_upload(result.upload, received_broadcast, round_index, client_id)
        upload, upload_bytes = transmit(corrupt_upload(faults, client_id, private, broadcast),
                                        config.payload_dtype)
        up_bytes += upload_bytes
        received.append(Upload(client_id, upload, federation.privacy.weight(result.weight)))
    report = validator.validate(received, algorithm.expected_upload(ctx, broadcast), broadcast,
                                algorithm.upload_check(ctx, broadcast))
    for rejection in report.rejected:
        if log is not None:
            log(f"round {round_index}: {rejection}")
    # central DP releases every round, even an empty one: whether a round was skipped would tell
    # who was sampled, which the accountant's Poisson subsampling assumes nobody learns
    aggregated = len(report.accepted) >= config.min_clients or federation.privacy.central
    server_flops = 0
    if aggregated:
        if federation.privacy.enabled:
            (new_state, new_broadcast), server_flops = count_server_flops(
                federation.privacy.aggregate, algorithm, ctx, server_state, broadcast, report.accepted, round_index)
        else:
            (new_state, new_broadcast), server_flops = count_server_flops(algorithm.aggregate, ctx, server_state,
                                                                          report.accepted)
        # never let the global state become NaN/Inf, whatever got through
        if all_finite(new_state) and all_finite(new_broadcast):
            server_state, broadcast = new_state, new_broadcast
        else:
            aggregated = False
            if log is not None:
                log(f"round {round_index}: aggregate is not finite; keeping the previous global state")
    elif log is not None:
        log(f"round {round_index}: {len(report.accepted)} valid updates < min_clients={config.min_clients}; "
            "keeping the previous global state")
    # what clients hold from now on (evaluation too) is the broadcast as received
    broadcast, _ = transmit(broadcast, config.payload_dtype)
    train_loss = float(np.mean(losses)) if losses else float("nan")
    return server_state, broadcast, RoundResult(round_index, selected, report.accepted, train_loss, stats,
                                                expected=len(selected), received=len(received),
                                                rejections=report.rejected, aggregated=aggregated,
                                                up_bytes=up_bytes, down_bytes=broadcast_bytes * len(selected),
                                                server_flops=server_flops)


def update_client(federation: Federation, store: ClientStore, broadcast: Payload, round_index: int,
                  client_id: int) -> ClientResult:
    """One client's ``client_update`` in this round (its randomness from (seed, round, client))."""
    return federation.algorithm.client_update(
        federation.context, client_id, store.get(client_id), broadcast, federation.clients[client_id],
        client_generator(federation.config, round_index, client_id),
    )


def train_clients(federation: Federation, store: ClientStore, broadcast: Payload, round_index: int,
                  client_ids: list[int]) -> dict[int, ClientResult]:
    """The updates of ``client_ids``: in this process, or with ``engine.workers`` > 1 in forked
    worker processes (see :mod:`pfedlora.federation.parallel`)."""
    return map_clients(federation, lambda client_id: update_client(federation, store, broadcast, round_index,
                                                                  client_id),
                       client_ids, work=lambda client_id: _client_work(federation, client_id))


def map_clients(federation: Federation, fn: Callable[[int], Any], client_ids: list[int],
                work: Callable[[int], int]) -> dict[int, Any]:
    """``{k: fn(k)}`` for ``client_ids``: in this process, or with ``engine.workers`` > 1 in forked worker
    processes (one torch thread each), the clients with the most ``work`` first; on an accelerator always
    in this process."""
    from pfedlora.federation.parallel import map_forked, worker_limit

    if federation.context.device.type != "cpu":
        # a forked child cannot use the CUDA context its parent made, and one accelerator is not
        # shared better by processes: on a GPU the clients run one after another in this process
        return {k: fn(k) for k in client_ids}
    configured = federation.config.engine.resolved_workers()
    workers = min(configured, len(client_ids), worker_limit() or len(client_ids))
    if workers == 1 and configured > 1:
        # in-process where the config asked for workers (one client left, or capped by --jobs):
        # one torch thread, as a worker would use, so the numbers stay those of the forked run
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return {k: fn(k) for k in client_ids}
        finally:
            torch.set_num_threads(previous)
    if workers > 1:
        # longest first: a free worker takes the next client, so the round ends with short ones
        # and no worker idles long while another finishes a big client (results do not depend on it)
        order = sorted(client_ids, key=work, reverse=True)
        return dict(zip(order, map_forked(fn, order, workers)))
    return {k: fn(k) for k in client_ids}


_PER_SAMPLE_FLOPS: dict[tuple, int] = {}


def _client_work(federation: Federation, client_id: int, split: str = "train") -> int:
    """A client's work on one of its splits (``train`` or ``test``), up to a common factor: the split's
    samples x its model's forward FLOPs per sample."""
    ctx, data = federation.context, federation.clients[client_id]
    x = data.train_x if split == "train" else data.test_x
    if int(x.shape[0]) == 0:
        return 0
    sample = x[:1]
    key = (ctx.client_arch(client_id), tuple(sample.shape), str(sample.dtype), ctx.in_channels, ctx.num_classes)
    if key not in _PER_SAMPLE_FLOPS:
        try:
            _PER_SAMPLE_FLOPS[key] = forward_flops(ctx.new_model(key[0], seed=0), sample)
        except (ValueError, RuntimeError):  # inputs the pool's models do not take: order by samples alone
            _PER_SAMPLE_FLOPS[key] = 1
    return int(x.shape[0]) * _PER_SAMPLE_FLOPS[key]


def validator_for(config: Config) -> UpdateValidator:
    """The server's upload checks. Under ``privacy`` only the structural ones (keys, shapes, dtypes,
    finiteness, the algorithm's own rule): a norm rule would let one client's data decide another's
    rejection (median rule), make the published count of aggregated clients data-dependent and log
    every client's update norm, none of which the DP accounting covers; clipping bounds norms instead."""
    if config.privacy.mode != "off":
        return UpdateValidator(norm_factor=None, max_norm=None)
    return UpdateValidator(config.validation.norm_factor, config.validation.max_norm,
                           config.validation.min_for_median)


def evaluate_clients(federation: Federation, store: ClientStore, broadcast: Payload,
                     meter: CostMeter | None = None,
                     diagnostics: dict[str, float] | None = None) -> list[float | None]:
    """Every client's personalized model on its own test split (accuracy in percent; None: no test split).

    The clients are evaluated as they are trained: with ``engine.workers`` > 1 in forked workers.
    ``diagnostics``, when given, receives the mean over the clients with a test split of each key of
    the algorithm's ``evaluation_metrics`` (nothing when the algorithm has none; not counted in ``meter``)."""
    algorithm, ctx = federation.algorithm, federation.context
    batch = federation.config.train.eval_batch_size
    wants_metrics = diagnostics is not None and algorithm.evaluation_metrics is not None

    def evaluate(client_id: int) -> tuple[float | None, int, dict[str, float] | None]:
        data = federation.clients[client_id]
        state = store.get(client_id)
        model = algorithm.personalized_model(ctx, client_id, state, broadcast)
        result = accuracy(model, data.test_x, data.test_y, batch, normalize=data.normalize)
        flops = evaluation_flops(model, data.test_x, batch, data.normalize) if meter is not None else 0
        metrics = (algorithm.evaluation_metrics(ctx, client_id, state, broadcast, data)
                   if wants_metrics and int(data.test_y.shape[0]) else None)
        return result, flops, metrics

    clients = list(range(len(federation.clients)))
    evaluated = map_clients(federation, evaluate, clients,
                            work=lambda client_id: _client_work(federation, client_id, "test"))
    accuracies = [evaluated[k][0] for k in clients]
    if meter is not None:
        for k in clients:
            meter.add_evaluation_flops(evaluated[k][1])
    if diagnostics is not None:
        diagnostics.update(mean_metrics([evaluated[k][2] for k in clients if evaluated[k][2] is not None]))
    return accuracies


def run(config: Config, out_dir: str | Path, *, overwrite: bool = False,
        progress: Callable[[int, int, dict], None] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a whole federation, writing the run directory; returns the summary dict."""
    check_run(config)  # before the run directory is made
    out = prepare_run_dir(out_dir, overwrite=overwrite)
    return _execute(config, out, None, progress=progress, log=log)


def run_or_resume(config: Config, out_dir: str | Path, *,
                  progress: Callable[[int, int, dict], None] | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Continue ``out_dir`` from its checkpoint when it holds an unfinished run of this very config
    (an interrupted comparison or sweep picks up where it stopped); otherwise start afresh there."""
    from pfedlora.federation.checkpoint import CHECKPOINT_NAME

    out = Path(out_dir)
    if (out / CHECKPOINT_NAME).is_file() and not (out / "summary.json").is_file():
        try:
            saved, checkpoint = load_resumable(out)
        except UserError:
            checkpoint = None  # another config or an unusable checkpoint: this run starts over
        else:
            if checkpoint is not None and saved.to_dict() == config.to_dict():
                check_run(config)
                return _execute(config, out, checkpoint, progress=progress, log=log)
    return run(config, out, overwrite=True, progress=progress, log=log)


def resume(run_dir: str | Path, *, progress: Callable[[int, int, dict], None] | None = None,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its last checkpoint (from round 1 if it has none)."""
    config, checkpoint = load_resumable(run_dir)
    check_run(config)
    return _execute(config, Path(run_dir), checkpoint, progress=progress, log=log)


def load_resumable(run_dir: str | Path) -> tuple[Config, dict[str, Any] | None]:
    """The run's config and its checkpoint (None when there is none yet); UserError when unusable."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"cannot resume {str(run_dir)!r}: not a run directory (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    return config, load_checkpoint(run_dir, config)


class _StopOnSignal:
    """SIGINT/SIGTERM set a flag; the run stops at the next round boundary. A second SIGINT aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                # an ignored SIGINT stays ignored: a --jobs child leaves Ctrl-C (which the terminal sends
                # to every process of the group) to the driver, which stops it once, with SIGTERM
                if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after the current round "
                         "(Ctrl-C again to abort without a new checkpoint)\n")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @contextmanager
    def workers_stopped(self, last_saved_round: int, out: Path) -> Iterator[None]:
        """A worker that dies after the stop signal (it reached the workers too, e.g. SIGTERM to the
        process group) ends the run as interrupted: the round under way is lost, the checkpoint of an
        earlier round stays as it is. Without a signal, the worker's death is an error."""
        try:
            yield
        except WorkerDied:
            if self.signum is None:
                raise
            raise RunInterrupted(last_saved_round, self.signum, str(out)) from None


def _execute(config: Config, out: Path, checkpoint: dict[str, Any] | None, *,
             progress: Callable[[int, int, dict], None] | None, log: Callable[[str], None]) -> dict[str, Any]:
    """The run at ``engine.threads`` torch threads (the process's own setting is restored after)."""
    previous = torch.get_num_threads()
    if config.engine.threads != "auto":
        torch.set_num_threads(int(config.engine.threads))
    try:
        return _execute_rounds(config, out, checkpoint, progress=progress, log=log)
    finally:
        torch.set_num_threads(previous)


def _execute_rounds(config: Config, out: Path, checkpoint: dict[str, Any] | None, *,
                    progress: Callable[[int, int, dict], None] | None, log: Callable[[str], None]) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    federation = Federation.build(config)
    memory_lines = federation.check_memory()  # refused here, before anything is written or trained
    write_yaml(out / "config.yaml", config.to_dict())
    write_json(out / "partition.json", federation.partition)
    write_json(out / "dataset.json", dataset_facts(federation.dataset))
    for line in data_header(federation):
        log(line)
    counts = federation.parameter_counts()
    flops = federation.forward_flops()
    for arch, n in counts["local_model_parameters"].items():
        log(f"local model {arch}: {n:,} parameters, {flops[arch]:,} forward FLOPs per sample")
    for line in memory_lines:
        log(line)
    for key, value in counts.items():
        if key != "local_model_parameters":
            log(f"{key}: {value:,}" if isinstance(value, int) else f"{key}: {value}")

    def event(line: str) -> None:  # rejections etc.: shown and kept in events.log
        log(line)
        with (out / "events.log").open("a") as handle:
            handle.write(line + "\n")

    if checkpoint is None:
        for line in empty_split_notes(federation):
            event(line)
    for line in privacy_warnings(config):
        event(f"warning: {line}")

    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    metrics = MetricsWriter(out / "metrics.csv")
    history: list[dict[str, Any]] = []
    client_accuracies: list[float] = []
    # update counts since the last metrics row
    pending = {"expected": 0, "received": 0, "rejected": 0}
    ever_selected: set[int] = set()
    costs = CostMeter(config.payload_dtype)
    first_round, elapsed_before = 1, 0.0
    if checkpoint is not None:
        device = federation.context.device
        server_state = _to_device(checkpoint["server_state"], device)
        broadcast = _to_device(checkpoint["broadcast"], device)
        for client_id, state in checkpoint["client_states"].items():
            store.put(int(client_id), _to_device(state, device))
        history = list(checkpoint["history"])
        client_accuracies = list(checkpoint["client_accuracies"])
        pending = dict(checkpoint["pending"])
        ever_selected = set(checkpoint.get("ever_selected", ()))
        costs.load_state_dict(checkpoint["costs"])
        first_round, elapsed_before = int(checkpoint["round"]) + 1, float(checkpoint["elapsed"])
        restore_rng(checkpoint["rng"])
        log(f"resuming after round {checkpoint['round']} of {config.rounds}")
    # a resumed run drops rows written after its checkpoint; under DP what the mechanism does not cover is left out
    metrics.rewrite([federation.privacy.released(row) for row in history])
    # TensorBoard / MLflow (config.tracking); a resumed run continues its tracked run
    trackers = open_trackers(config.tracking, config.to_dict(), out, resuming=checkpoint is not None,
                             first_round=first_round, warn=event)
    trackers.log_restored(metrics.path)
    metrics.on_row = trackers.log_row  # every metrics.csv row from here on
    if progress is not None and first_round > 1:
        progress(first_round - 1, config.rounds, history[-1] if history else {})
    validator = validator_for(config)
    # the algorithm's evaluation_metrics of the last evaluated round (summary.json's final_<key>)
    final_diagnostics: dict[str, float] | None = None

    with _StopOnSignal() as stop, trackers:
        for round_index in range(first_round, config.rounds + 1):
            with stop.workers_stopped(round_index - 1, out):
                server_state, broadcast, result = run_round(federation, store, server_state, broadcast, round_index,
                                                            validator=validator, log=event)
            ever_selected.update(result.selected)
            pending["expected"] += result.expected
            pending["received"] += result.received
            pending["rejected"] += len(result.rejections)
            costs.add_round(result)
            if round_index % config.eval_every == 0 or round_index == config.rounds:
                diagnostics = final_diagnostics = {}
                with stop.workers_stopped(round_index - 1, out):  # evaluation forks workers too
                    client_accuracies = evaluate_clients(federation, store, broadcast, meter=costs,
                                                         diagnostics=diagnostics)
                # the metrics row: one per evaluated round (update counts and costs since the previous row)
                row = {"round": round_index, **summarize(client_accuracies), "train_loss": result.train_loss,
                       **pending, "wall_s": elapsed_before + time.perf_counter() - started, **costs.row(),
                       **federation.algorithm.server_metrics(federation.context, server_state), **diagnostics}
                if federation.privacy.enabled:  # epsilon spent so far, at delta
                    row["epsilon"] = federation.privacy.epsilon(config, round_index)
                pending = {key: 0 for key in pending}
                metrics.write(federation.privacy.released(row))
                history.append(row)
                if progress is not None:
                    progress(round_index, config.rounds, row)
            elif progress is not None:
                progress(round_index, config.rounds, {})
            every = config.checkpoint_every
            if (every and round_index % every == 0) or round_index == config.rounds or stop.signum is not None:
                save_checkpoint(out, config, {
                    "round": round_index,
                    "server_state": server_state,
                    "broadcast": broadcast,
                    "client_states": store.states(),
                    "history": history,
                    "client_accuracies": client_accuracies,
                    "pending": pending,
                    "ever_selected": sorted(ever_selected),
                    "costs": costs.state_dict(),
                    "elapsed": elapsed_before + time.perf_counter() - started,
                })
            if stop.signum is not None and round_index < config.rounds:
                raise RunInterrupted(round_index, stop.signum, str(out))

    summary = run_summary(config, history, client_accuracies, elapsed_before + time.perf_counter() - started)
    summary |= counts | costs.totals() | participation(config, client_accuracies, ever_selected)
    summary |= {f"final_{key}": value
                for key, value in federation.algorithm.server_metrics(federation.context, server_state).items()}
    if final_diagnostics is None and federation.algorithm.evaluation_metrics is not None:
        # resumed after the last round's checkpoint: measured again on the restored state
        final_diagnostics = {}
        evaluate_clients(federation, store, broadcast, diagnostics=final_diagnostics)
    summary |= diagnostics_summary(final_diagnostics or {})
    if config.target_accuracy is not None:
        summary["time_to_target"] = time_to_target(history, config.target_accuracy)
    summary |= federation.privacy.summary(config, config.rounds)
    write_json(out / "summary.json", federation.privacy.released(summary))
    trackers.finish(config.rounds)  # summary.json as written
    return summary


def data_header(federation: Federation) -> list[str]:
    """What the run trains and evaluates on, printed before round 1: sample counts, classes, and every
    cap that left data out (a config that caps ``max_train_samples`` must not pass for the whole dataset)."""
    config, dataset = federation.config, federation.dataset
    names = list(dataset.class_names)
    shown = ", ".join(map(str, names)) if len(names) <= 12 else ", ".join(map(str, names[:10])) + f", ... ({len(names)} in all)"
    lines = [f"data: {dataset.name}, {len(dataset.train_y):,} training / {len(dataset.test_y):,} test samples, "
             f"{dataset.num_classes} classes: {shown}"]
    caps = [f"{key}={config.dataset.max_train_samples if 'train' in key else config.dataset.max_test_samples}: kept "
            f"{kept:,} of {total:,} {'training' if 'train' in key else 'test'} samples"
            for key, (kept, total) in dataset.caps.items()]
    held = sum(client.num_train for client in federation.clients)
    if config.dataset.validation_fraction > 0:
        evaluated = sum(int(client.test_y.shape[0]) for client in federation.clients)
        caps.append(f"dataset.validation_fraction={config.dataset.validation_fraction:g}: {evaluated:,} of the clients' "
                    "training samples are held out and evaluated on; the test split is not read")
        held += evaluated
    if held < len(dataset.train_y):  # e.g. the pathological partition's per-class shares
        caps.append(f"partition ({config.partition.kind}): the {config.num_clients} clients hold {held:,} of the "
                    f"{len(dataset.train_y):,} training samples")
    if dataset.text is not None:
        caps.append(f"dataset.max_length={dataset.text.max_length}: every text padded or cut to this many tokens")
    lines.append("caps: " + ("; ".join(caps) if caps else "none (every sample of both splits is used)"))
    return lines


def dataset_facts(dataset: ArrayDataset) -> dict[str, Any]:
    """What an exported model needs of its dataset (pfedlora.export): shapes, classes, text
    spec and how raw inputs were preprocessed."""
    text = dataset.text
    return {"name": dataset.name, "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names),
            "text": None if text is None else {"vocab_size": text.vocab_size, "max_length": text.max_length,
                                                "pad_id": text.pad_id},
            "preprocessing": dataset.preprocessing}


def empty_split_notes(federation: Federation) -> list[str]:
    """One line per client with an empty training or test split, saying what the run does about it."""
    notes = []
    for client_id, data in enumerate(federation.clients):
        if data.num_train == 0:
            notes.append(f"client {client_id}: no training samples; it is never trained and uploads nothing")
        if int(data.test_y.shape[0]) == 0:
            notes.append(f"client {client_id}: empty test split; left out of the mean accuracy")
    return notes


def _to_device(state: State, device: torch.device) -> State:
    return {name: tensor.to(device) for name, tensor in state.items()}
