"""Client-level differential privacy for averaged uploads (DP-FedAvg), shared by every runtime.

McMahan, H. B., Ramage, D., Talwar, K., Zhang, L. "Learning Differentially Private Recurrent
Language Models." ICLR 2018.

It applies to an algorithm whose ``aggregate`` makes the broadcast the weighted mean of the uploads
(:attr:`Algorithm.averages_uploads`: pfedlora with ``adapter.aggregation: factors``, lg_fedavg,
fml, fedavg). A client's *update* is ``upload - broadcast`` over the whole payload (every tensor,
one L2 norm). With ``privacy.mode`` set:

* every update is clipped to L2 norm ``clip_norm`` (C) on the client; in ``central`` mode the
  server clips again (in float64, so the bound holds exactly whatever the client did);
* the aggregate is the plain mean over the n aggregated clients (weights fixed at 1, never the
  sample counts: a weight that depends on the data would change the sensitivity);
* ``central``: clients are sampled by **Poisson sampling** (each independently with probability
  q = m/N, m = ``max(1, round(fraction x N))``) from a secret source, and the server releases
  ``(sum of clipped updates + N(0, (σC)²)) / m``: a fixed denominator, so one client (add/remove)
  moves the released sum by at most C whatever the others do. Epsilon: the Poisson-subsampled
  Gaussian mechanism with noise multiplier σ and rate q, composed over the rounds run
  (McMahan et al. 2018, Alg. 1 with the fixed-denominator estimator). The round is released even
  when no client was sampled (noise alone): skipping it would tell who was sampled;
* ``local``: every client adds N(0, (σ·C)²) to its clipped update before it leaves, so each
  upload is private on its own, against the server too. The server picks the clients (a fixed-size
  draw, public: no amplification by sampling is claimed), and a client's data may be replaced by
  any other, which moves its clipped update by up to 2C: epsilon is that of the Gaussian mechanism
  with noise multiplier σ/2, composed over the rounds the most-selected client took part in.

Epsilon at ``delta`` (default min(1e-5, N^-1.5), see :func:`default_delta`) comes from Google's
``dp-accounting`` (RDP by default, PLD on request): pure Python, maintained, both accountants behind
one DpEvent API, no torch dependency (Opacus would pin its own torch).

Secrecy of the randomness: the config, seed included, is public (it is in config.yaml, in exported
files and in every Flower message). So the noise and the central-mode sampling are drawn from the
operating system's CSPRNG, fresh for every draw: the noise from a ChaCha20 keystream under a fresh
256-bit key (:mod:`pfedlora.federation.secure_noise`; torch's generator would keep only 32 bits of
any seed), each Gaussian the sum of four draws of half the std, which blunts the floating-point
attacks on the low bits of one sample (Mironov, CCS 2012; Opacus's ``secure_mode`` does the same). Only with
``privacy.noise_source: seeded_insecure`` do they come from (seed, round[, client]), for tests and
debugging: then anyone holding the config can regenerate the noise and subtract it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pfedlora.algorithms.base import Algorithm, FederationContext, Payload, State, Upload, derive_seed
# the sampler lives with the client selection it is part of; re-exported for the accountant's callers
from pfedlora.federation.sampling import (  # noqa: F401
    expected_clients,
    poisson_sample,
    poisson_sampled,
    sample_clients,
    sampling_rate,
)
from pfedlora.federation.secure_noise import secure_gaussian

if TYPE_CHECKING:
    from pfedlora.config import Config

MEAN_UPLOAD_ID = -1  # the client id of the one (mean) upload the algorithm's aggregate receives
MAX_NOISE_MULTIPLIER = 1e4  # target_epsilon: the largest noise multiplier searched
SECURE, SEEDED_INSECURE = "secure", "seeded_insecure"  # privacy.noise_source


def _dp_accounting():
    try:
        import dp_accounting
    except ImportError:  # pragma: no cover - the extra is part of `dev`
        raise ValueError("privacy needs the dp-accounting package: pip install 'pfedlora[privacy]'") from None
    return dp_accounting


@contextlib.contextmanager
def _quiet_absl():
    """dp-accounting's RDP logs a warning per fractional order it cannot evaluate under sampling
    (it drops that order, which only makes epsilon conservative); keep the run's output readable."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ---- configuration checks ---------------------------------------------------------------------


def supported_algorithms(config: Config) -> list[str]:
    from pfedlora.algorithms import algorithm_names, get_algorithm

    return [name for name in algorithm_names() if get_algorithm(name).averages_uploads(config)]


def check_privacy_config(config: Config) -> None:
    """Raise ValueError (one line) when privacy or SecAgg+ settings cannot work together."""
    from pfedlora.algorithms import get_algorithm

    features = [f"privacy.mode {config.privacy.mode}"] if config.privacy.mode != "off" else []
    if config.flower.secagg.enabled:
        features.append("flower.secagg")
    if not get_algorithm(config.algorithm).averages_uploads(config):
        raise ValueError(
            f"{' and '.join(features)}: algorithm {config.algorithm} is not supported with these settings: its "
            f"upload is not a weighted mean of tensors, so one client's influence has no bound to clip and mask; "
            f"supported: {', '.join(supported_algorithms(config))}")
    if config.flower.secagg.enabled and config.payload_dtype != "float32":
        raise ValueError("flower.secagg sends SecAgg+'s own quantised integers; set payload_dtype float32")
    if config.flower.secagg.enabled:
        check_secagg_bounds(config)
    if config.privacy.mode != "off":
        _dp_accounting()
        resolved_noise_multiplier(config)  # a target epsilon that cannot be reached fails here


SECAGG_MODULUS = 2**32  # SecAggPlusWorkflow's modulus_range (its default; it must stay below 2^32 there)


def max_clients_per_round(config: Config) -> int:
    """The most clients one round can sum: all N under Poisson sampling, else the fixed-size draw m."""
    return config.num_clients if poisson_sampled(config) else expected_clients(config)


def check_secagg_bounds(config: Config) -> None:
    """SecAgg+ sums quantised values in [0, quantization_range] modulo 2^32: n of them wrap silently once
    n x quantization_range >= 2^32. Under DP a clipped update's coordinates reach clip_norm, which must
    not exceed clipping_range (SecAgg+ would clamp them, a second, unaccounted clipping)."""
    settings = config.flower.secagg
    clients = max_clients_per_round(config)
    if clients * settings.quantization_range >= SECAGG_MODULUS:
        limit = (SECAGG_MODULUS - 1) // clients
        raise ValueError(f"flower.secagg.quantization_range {settings.quantization_range} x {clients} clients per round "
                         f">= 2^32 would wrap SecAgg+'s modular sum; accepted: at most {limit} for {clients} clients")
    if config.privacy.mode != "off" and float(config.privacy.clip_norm) > settings.clipping_range:
        raise ValueError(f"privacy.clip_norm {config.privacy.clip_norm:g} > flower.secagg.clipping_range "
                         f"{settings.clipping_range:g}: SecAgg+ would clamp clipped updates; set clip_norm <= "
                         "clipping_range")


# ---- accounting -------------------------------------------------------------------------------


def default_delta(num_clients: int) -> float:
    """min(1e-5, N^-1.5). δ is the chance the ε statement fails outright; a mechanism that publishes
    one random client's data in full is (0, 1/N)-DP, so δ must be far below 1/N. N^-1.5 keeps
    N·δ -> 0 as federations grow (δ = 1e-9 for a million clients), and 1e-5 is the customary
    ceiling for small ones (Abadi et al. 2016; McMahan et al. 2018 use N^-1.1 ≈ 1e-9 on 763k users)."""
    return min(1e-5, float(num_clients) ** -1.5)


def resolved_delta(config: Config) -> float:
    return config.privacy.delta if config.privacy.delta is not None else default_delta(config.num_clients)


def privacy_warnings(config: Config) -> list[str]:
    """One line per setting that weakens the privacy statement (shown at run start; never an error)."""
    if config.privacy.mode == "off":
        return []
    lines = []
    delta = resolved_delta(config)
    if delta >= 1.0 / config.num_clients:
        lines.append(f"privacy.delta {delta:g} >= 1/num_clients ({1.0 / config.num_clients:g}): a mechanism that "
                     f"publishes one client's data in full meets that delta; use at most "
                     f"{default_delta(config.num_clients):g}")
    if config.privacy.noise_source == SEEDED_INSECURE:
        lines.append("privacy.noise_source seeded_insecure: the noise is a function of the public seed and can be "
                     "removed by anyone holding the config; this run is NOT private")
    return lines


def participations(config: Config, rounds: int) -> int:
    """Rounds among the first ``rounds`` in which the most-selected client was selected."""
    if sampling_rate(config) >= 1.0:
        return rounds

    counts = [0] * config.num_clients
    for round_index in range(1, rounds + 1):
        for client_id in sample_clients(config, round_index):
            counts[client_id] += 1
    return max(counts)


PLD_INTERVAL = 1e-4  # dp-accounting's default value_discretization_interval: the accounting a run reports
PLD_SEARCH_INTERVAL = 1e-2  # target_epsilon search: 50-100x faster per evaluation, and pessimistic (below)
PLD_SEARCH_EVALUATIONS = 48  # bound on the coarse PLD evaluations of one search (each well under a second)


def _accountant(kind: str, interval: float = PLD_INTERVAL):
    dpa = _dp_accounting()
    return dpa.rdp.RdpAccountant() if kind == "rdp" else dpa.pld.PLDAccountant(value_discretization_interval=interval)


def dp_event(mode: str, noise_multiplier: float, rate: float, count: int):
    """The dp-accounting event of ``count`` rounds (see the module docstring)."""
    dpa = _dp_accounting()
    if mode == "local":
        per_round = dpa.GaussianDpEvent(noise_multiplier / 2.0)
    elif rate >= 1.0:
        per_round = dpa.GaussianDpEvent(noise_multiplier)
    else:
        per_round = dpa.PoissonSampledDpEvent(rate, dpa.GaussianDpEvent(noise_multiplier))
    return dpa.SelfComposedDpEvent(per_round, count)


@lru_cache(maxsize=256)
def _epsilon(mode: str, accountant: str, noise_multiplier: float, rate: float, count: int, delta: float,
             interval: float = PLD_INTERVAL) -> float:
    if count == 0:
        return 0.0
    with _quiet_absl():
        event = dp_event(mode, noise_multiplier, rate, count)
        return float(_accountant(accountant, interval).compose(event).get_epsilon(delta))


def epsilon(config: Config, rounds: int, noise_multiplier: float | None = None) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds."""
    sigma = noise_multiplier if noise_multiplier is not None else resolved_noise_multiplier(config)
    count = participations(config, rounds) if config.privacy.mode == "local" else rounds
    return _epsilon(config.privacy.mode, config.privacy.accountant, float(sigma), sampling_rate(config), count,
                    resolved_delta(config))


def resolved_noise_multiplier(config: Config) -> float:
    """``noise_multiplier``, or the one that reaches ``target_epsilon`` after ``rounds`` rounds."""
    p = config.privacy
    if p.noise_multiplier is not None:
        return float(p.noise_multiplier)
    assert p.target_epsilon is not None
    count = participations(config, config.rounds) if p.mode == "local" else config.rounds
    return _calibrate(p.mode, p.accountant, float(p.target_epsilon), sampling_rate(config), count,
                      resolved_delta(config), config.rounds)


@lru_cache(maxsize=64)
def _calibrate(mode: str, accountant: str, target: float, rate: float, count: int, delta: float, rounds: int) -> float:
    """The smallest noise multiplier whose epsilon is <= ``target`` (within 0.1% relative).

    RDP is cheap at any sigma and bisects over the whole range. PLD is not: one composition at the
    default interval takes seconds, more as sigma falls (18 s at sigma 0.15 over 5 rounds under load).
    So PLD searches at a coarse discretization interval (PLD_SEARCH_INTERVAL) and checks only the
    answer at the interval a run reports (PLD_INTERVAL), one evaluation that the run's own epsilon then
    reuses from the cache. dp-accounting's PLD is pessimistic (privacy losses rounded up to the grid)
    and the fine grid refines the coarse one, so the coarse epsilon is >= the fine one: the coarse
    answer reaches the target under the fine accounting too, and overshoots the fine answer only by
    the coarse-vs-fine gap (< 0.05% of epsilon in benchmarks/pld_calibration.py). The final check
    still runs, so a sigma that misses the target under the reported accounting is never returned.
    The search starts from the RDP answer, an upper bound (PLD's epsilon is never above RDP's), so
    no PLD evaluation happens far below the answer."""
    def rdp_eps(sigma: float) -> float:
        return _epsilon(mode, "rdp", sigma, rate, count, delta)

    low, high = 1e-2, MAX_NOISE_MULTIPLIER
    if rdp_eps(high) > target and (accountant == "rdp" or _epsilon(mode, accountant, high, rate, count, delta) > target):
        eps_high = _epsilon(mode, accountant, high, rate, count, delta)
        raise ValueError(f"privacy.target_epsilon {target:g} is not reached in {rounds} rounds by any noise multiplier "
                         f"up to {high:g} (epsilon there: {eps_high:.3g}); raise target_epsilon or lower rounds")
    high = rdp_sigma = _bisect(rdp_eps, target, low, high, 1e-6)
    if accountant == "rdp":
        return high

    evaluations = 0

    def coarse_eps(sigma: float) -> float:
        nonlocal evaluations
        evaluations += 1
        if evaluations > PLD_SEARCH_EVALUATIONS:  # cannot happen with the bounds below; a guard, not a path
            raise RuntimeError("privacy: PLD noise-multiplier search exceeded its evaluation bound")
        return _epsilon(mode, accountant, sigma, rate, count, delta, PLD_SEARCH_INTERVAL)

    low = high
    for _ in range(20):  # step down by 10% until PLD exceeds the target (or sigma reaches the floor)
        low = max(high / 1.1, 1e-2)
        if low == high or coarse_eps(low) > target:
            break
        high = low
    sigma = high if low == high else _bisect(coarse_eps, target, low, high, 1e-3, max_steps=25)

    def fine_eps(value: float) -> float:
        return _epsilon(mode, accountant, value, rate, count, delta)

    for _ in range(8):  # the reported accounting must agree; step up by the tolerance where it does not
        if fine_eps(sigma) <= target:
            return sigma
        sigma *= 1.001
    return rdp_sigma  # RDP's answer: PLD's epsilon is never above RDP's


def _bisect(eps, target: float, low: float, high: float, tolerance: float, max_steps: int = 60) -> float:
    """Bisection (geometric) on a decreasing ``eps``: the smallest sigma in [low, high] with eps <= target,
    within ``tolerance`` relative; ``high`` must satisfy it."""
    if eps(low) <= target:
        return low
    for _ in range(max_steps):
        mid = math.sqrt(low * high)
        if eps(mid) > target:
            low = mid
        else:
            high = mid
        if high / low < 1 + tolerance:
            break
    return high


# ---- clipping and noise -----------------------------------------------------------------------


def update_of(upload: Payload, broadcast: Payload) -> dict[str, torch.Tensor]:
    """``upload - broadcast`` per tensor, in float64 (one client's update)."""
    update = {}
    for name, tensor in upload.items():
        if not tensor.is_floating_point():
            raise ValueError(f"privacy: upload tensor {name!r} is {tensor.dtype}, not floating point; "
                             "only float updates can be clipped and noised")
        update[name] = tensor.detach().to(torch.float64) - broadcast[name].detach().to(tensor.device, torch.float64)
    return update


def l2_norm(update: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((t * t).sum()) for t in update.values()))


def clip_update(update: dict[str, torch.Tensor], clip_norm: float) -> dict[str, torch.Tensor]:
    """``update`` scaled by min(1, C / ||update||) over the whole payload (float64)."""
    norm = l2_norm(update)
    if norm <= clip_norm:
        return update
    scale = clip_norm / norm
    return {name: tensor * scale for name, tensor in update.items()}


def gaussian_like(update: dict[str, torch.Tensor], std: float, seed: int | None) -> dict[str, torch.Tensor]:
    """Float64 N(0, std²) noise shaped like ``update``, in payload order.

    ``seed`` None (``noise_source: secure``): from a ChaCha20 keystream under a fresh 256-bit key
    from the OS, every value the sum of four draws at std/2 (:mod:`pfedlora.federation.secure_noise`);
    no seed exists that reproduces it. An int: a plain draw from torch's generator seeded with it
    (``seeded_insecure``: reproducible by anyone holding the config, not private)."""
    if seed is None:
        return {name: secure_gaussian(tensor.shape, std).to(tensor.device) for name, tensor in update.items()}
    generator = torch.Generator()
    generator.manual_seed(seed)
    return {name: torch.randn(tensor.shape, generator=generator, dtype=torch.float64).to(tensor.device) * std
            for name, tensor in update.items()}


def _applied(broadcast: Payload, update: dict[str, torch.Tensor]) -> Payload:
    return {name: (broadcast[name].detach().to(torch.float64) + delta).to(broadcast[name].dtype)
            for name, delta in update.items()}


# Left out of metrics.csv and summary.json by Privacy.released. Under central DP the sample is secret
# (Poisson sampling is what the accountant's amplification assumes), so every figure that counts or
# follows the sampled clients would publish it outside the mechanism: update counts, the bytes and
# FLOPs of their training, which clients were ever selected. The mean training loss is computed from
# the clients' raw losses before any noise, in both modes.
SAMPLE_REVEALING = (
    "expected", "received", "rejected", "replied",
    "up_bytes", "down_bytes", "train_flops", "server_flops",
    "cum_up_bytes", "cum_down_bytes", "cum_train_flops", "cum_server_flops",
    "total_up_bytes", "total_down_bytes", "total_train_flops", "total_server_flops", "client_rounds",
    "up_bytes_per_client_round", "down_bytes_per_client_round", "train_flops_per_client_round",
    "server_flops_per_round", "clients_ever_selected", "selected_clients_final_accuracy", "rounds_without_quorum",
    "time_to_target",
)
PRE_NOISE = ("train_loss",)


@dataclass(frozen=True)
class Privacy:
    """The privacy settings of one run, resolved (noise multiplier, delta); ``enabled`` False: a no-op.

    ``expected_clients``: m, the fixed denominator of the central-mode mean. ``noise_source``:
    ``secure`` (fresh secret randomness) or ``seeded_insecure`` (from ``seed``: reproducible, not private)."""

    mode: str
    clip_norm: float
    noise_multiplier: float
    delta: float
    seed: int
    expected_clients: int = 1
    noise_source: str = SECURE

    @classmethod
    def from_config(cls, config: Config) -> Privacy:
        p = config.privacy
        if p.mode == "off":
            return cls("off", 0.0, 0.0, 0.0, config.seed)
        return cls(p.mode, float(p.clip_norm), resolved_noise_multiplier(config), resolved_delta(config), config.seed,
                   expected_clients(config), p.noise_source)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def central(self) -> bool:
        return self.mode == "central"

    def _noise_seed(self, *parts: object) -> int | None:
        return derive_seed(self.seed, *parts) if self.noise_source == SEEDED_INSECURE else None

    def weight(self, sample_weight: float) -> float:
        """The aggregation weight: fixed at 1 under DP (uniform over the aggregated clients)."""
        return 1.0 if self.enabled else sample_weight

    def client_update(self, upload: Payload, broadcast: Payload, round_index: int, client_id: int) -> dict[str, torch.Tensor]:
        """A client's clipped (and in local mode noised) update, float64."""
        update = clip_update(update_of(upload, broadcast), self.clip_norm)
        if self.mode == "local":
            noise = gaussian_like(update, self.noise_multiplier * self.clip_norm,
                                  self._noise_seed("dp-local-noise", round_index, client_id))
            update = {name: tensor + noise[name] for name, tensor in update.items()}
        return update

    def client_upload(self, upload: Payload, broadcast: Payload, round_index: int, client_id: int) -> Payload:
        """What a client sends: ``broadcast`` + its private update, in the upload's dtypes (unchanged when off)."""
        if not self.enabled:
            return upload
        return _applied(broadcast, self.client_update(upload, broadcast, round_index, client_id))

    def mean_update(self, uploads: list[Upload], broadcast: Payload) -> dict[str, torch.Tensor]:
        """Central: the sum of the updates, each clipped again on the server, over the fixed m (no uploads:
        zeros). Local: the plain mean of the (already noised) uploads."""
        total: dict[str, torch.Tensor] = {}
        for upload in uploads:
            update = update_of(upload.payload, broadcast)
            if self.central:
                update = clip_update(update, self.clip_norm)
            for name, tensor in update.items():
                total[name] = total[name] + tensor if name in total else tensor
        if not self.central:
            return {name: tensor / len(uploads) for name, tensor in total.items()}
        if not uploads:  # nobody sampled (or every upload malformed): the release is the noise alone
            total = {name: torch.zeros(tensor.shape, dtype=torch.float64, device=tensor.device)
                     for name, tensor in broadcast.items() if tensor.is_floating_point()}
        return {name: tensor / self.expected_clients for name, tensor in total.items()}

    def mean_from_secure_sum(self, weighted_mean: dict[str, torch.Tensor], contributors: int) -> dict[str, torch.Tensor]:
        """SecAgg+ delivers the uniform mean over its contributors; central DP releases the sum over m."""
        if not self.central:
            return weighted_mean
        return {name: tensor * (contributors / self.expected_clients) for name, tensor in weighted_mean.items()}

    def release(self, mean_update: dict[str, torch.Tensor], round_index: int) -> dict[str, torch.Tensor]:
        """The mean update as released: central mode adds N(0, (σC/m)²), i.e. σC on the sum."""
        if not self.central:
            return mean_update
        noise = gaussian_like(mean_update, self.noise_multiplier * self.clip_norm / self.expected_clients,
                              self._noise_seed("dp-central-noise", round_index))
        return {name: tensor + noise[name] for name, tensor in mean_update.items()}

    def aggregate(self, algorithm: Algorithm, ctx: FederationContext, server_state: State, broadcast: Payload,
                  uploads: list[Upload], round_index: int) -> tuple[State, Payload]:
        """The algorithm's aggregate of the private mean: the one upload it averages is that mean."""
        released = self.release(self.mean_update(uploads, broadcast), round_index)
        return apply_mean(algorithm, ctx, server_state, broadcast, released)

    def epsilon(self, config: Config, rounds: int) -> float:
        return epsilon(config, rounds, self.noise_multiplier)

    def released(self, values: dict[str, Any]) -> dict[str, Any]:
        """A metrics row or summary without what the privacy statement does not cover (see
        SAMPLE_REVEALING, PRE_NOISE): under ``central`` every figure that depends on the secret sample,
        under any mode the training loss, a mean of the clients' raw losses that no noise protects."""
        if not self.enabled:
            return values
        dropped = PRE_NOISE + (SAMPLE_REVEALING if self.central else ())
        return {key: value for key, value in values.items() if key not in dropped}

    def summary(self, config: Config, rounds: int) -> dict[str, Any]:
        """The privacy facts for summary.json ({} when off)."""
        if not self.enabled:
            return {}
        sampler = ("poisson" if poisson_sampled(config) else "all") if self.central else "fixed_size_public"
        return {"epsilon": self.epsilon(config, rounds), "privacy": {
            "mode": self.mode, "clip_norm": self.clip_norm, "noise_multiplier": self.noise_multiplier,
            "delta": self.delta, "accountant": config.privacy.accountant, "sampling_rate": sampling_rate(config),
            "sampler": sampler, "noise_source": self.noise_source, "target_epsilon": config.privacy.target_epsilon}}


def apply_mean(algorithm: Algorithm, ctx: FederationContext, server_state: State, broadcast: Payload,
               mean_update: dict[str, torch.Tensor]) -> tuple[State, Payload]:
    """The algorithm's ``aggregate`` given one upload, ``broadcast + mean_update``: for an algorithm that
    averages uploads this makes that mean its new global state (SecAgg+ delivers such a mean too)."""
    return algorithm.aggregate(ctx, server_state, [Upload(MEAN_UPLOAD_ID, _applied(broadcast, mean_update), 1.0)])
