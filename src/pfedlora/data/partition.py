"""Split a dataset among federated clients (pathological, Dirichlet or IID).

Training indices are disjoint across clients. For the non-IID schemes each client's test set is
drawn from the official test split with the class proportions of its own training set, so
personalized accuracy is measured on the client's own distribution; clients may share test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pfedlora.errors import UserError

KINDS = ("pathological", "dirichlet", "iid")
_MAX_DIRICHLET_ATTEMPTS = 1000


@dataclass
class ClientSplit:
    """Indices of one client's samples: ``train_idx`` into train_x, ``test_idx`` into test_x."""

    train_idx: np.ndarray
    test_idx: np.ndarray


def partition_clients(
    train_y: Any,
    test_y: Any,
    num_classes: int,
    num_clients: int,
    *,
    kind: str = "pathological",
    classes_per_client: int | None = None,
    alpha: float = 0.5,
    share_low: float = 0.4,
    share_high: float = 0.6,
    min_samples: int = 10,
    size_skew: float = 0.0,
    seed: int = 0,
) -> list[ClientSplit]:
    """Partition train/test labels among ``num_clients`` clients; deterministic for a given seed.

    ``size_skew`` > 0 makes client sizes long-tailed: client weights follow a Zipf law
    ``rank ** -size_skew`` over a random ranking of the clients, and every scheme splits samples
    in proportion to them (0 keeps the scheme's own sizes).
    """
    train_y = _labels(train_y, num_classes, "train")
    test_y = _labels(test_y, num_classes, "test")
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise UserError(f"num_clients must be a positive integer, got {num_clients!r}")
    check_partition_sizes(len(train_y), num_classes, num_clients, kind, classes_per_client)
    if size_skew < 0:
        raise UserError(f"partition.size_skew must be >= 0, got {size_skew}")
    rng = np.random.default_rng(seed)
    weights = size_weights(num_clients, size_skew, np.random.default_rng([seed, 1]))
    if kind == "pathological":
        train_parts = _pathological(train_y, num_classes, num_clients, classes_per_client, share_low, share_high, rng, weights)
    elif kind == "dirichlet":
        train_parts = _dirichlet(train_y, num_classes, num_clients, alpha, min_samples, rng, weights)
    elif kind == "iid":
        if num_clients > len(train_y):
            raise UserError(f"iid partition: num_clients={num_clients} exceeds the {len(train_y)} training samples")
        sizes = 1 + _apportion(len(train_y) - num_clients, weights)
        train_parts = np.split(rng.permutation(len(train_y)), np.cumsum(sizes)[:-1])
        test_parts = np.array_split(rng.permutation(len(test_y)), num_clients)
        return [ClientSplit(np.sort(a).astype(np.int64), np.sort(b).astype(np.int64)) for a, b in zip(train_parts, test_parts)]
    else:
        raise UserError(f"unknown partition kind {kind!r}; accepted: {', '.join(KINDS)}")
    return [
        ClientSplit(np.sort(idx).astype(np.int64), _matching_test(train_y[idx], train_y, test_y, num_classes, rng))
        for idx in train_parts
    ]


def check_partition_sizes(num_train: int, num_classes: int, num_clients: int, kind: str,
                          classes_per_client: int | None) -> None:
    """Refuse, in one line and before anything of size num_clients is allocated, a federation the data
    cannot fill: work and memory of every scheme grow with num_clients (one weight, one class list,
    one index list per client), so a typo such as num_clients 387682504 must not run for minutes."""
    if num_clients > num_train:
        raise UserError(f"num_clients={num_clients} exceeds the {num_train} training samples: every client needs at "
                        f"least one; accepted: 1 to {num_train}")
    if kind == "pathological" and classes_per_client is not None:
        if not 1 <= classes_per_client <= num_classes:
            raise UserError(f"classes_per_client={classes_per_client} must be between 1 and num_classes={num_classes}")
        if num_clients * classes_per_client > num_train:
            raise UserError(f"pathological partition: num_clients={num_clients} x classes_per_client={classes_per_client} "
                            f"exceeds the {num_train} training samples (one per client and class at least); "
                            f"accepted: num_clients up to {num_train // classes_per_client}")


def partition_counts(
    splits: Sequence[ClientSplit], train_y: Any, test_y: Any, num_classes: int
) -> dict[str, Any]:
    """Per-client class counts, JSON-serializable (class ids as string keys; zero counts omitted)."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)

    def counts(y: np.ndarray) -> dict[str, int]:
        c = np.bincount(y, minlength=num_classes)
        return {str(k): int(v) for k, v in enumerate(c) if v}

    clients = [
        {
            "client": k,
            "num_train": int(len(s.train_idx)),
            "num_test": int(len(s.test_idx)),
            "train": counts(train_y[s.train_idx]),
            "test": counts(test_y[s.test_idx]),
        }
        for k, s in enumerate(splits)
    ]
    return {"num_clients": len(splits), "num_classes": int(num_classes), "clients": clients}


def _labels(y: Any, num_classes: int, split: str) -> np.ndarray:
    arr = np.asarray(y).reshape(-1)
    if num_classes < 1:
        raise UserError(f"num_classes must be positive, got {num_classes}")
    if arr.size == 0:
        raise UserError(f"cannot partition an empty {split} split")
    if not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= num_classes:
        raise UserError(f"{split} labels must be integers in 0..{num_classes - 1}")
    return arr.astype(np.int64)


def size_weights(num_clients: int, size_skew: float, rng: np.random.Generator) -> np.ndarray:
    """Relative client sizes: all ones, or Zipf ``rank ** -size_skew`` over a random client ranking."""
    if size_skew == 0:
        return np.ones(num_clients)
    ranks = rng.permutation(num_clients) + 1
    return ranks.astype(np.float64) ** -size_skew


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into integer parts proportional to ``weights`` (largest remainder)."""
    weights = np.asarray(weights, dtype=np.float64)
    if total <= 0 or weights.sum() <= 0:
        return np.zeros(len(weights), dtype=np.int64)
    exact = total * weights / weights.sum()
    parts = np.floor(exact).astype(np.int64)
    short = total - int(parts.sum())
    if short > 0:
        parts[np.argsort(-(exact - parts), kind="stable")[:short]] += 1
    return parts


def _assign_classes(num_classes: int, num_clients: int, cpc: int, rng: np.random.Generator) -> list[list[int]]:
    # Walk a stream of shuffled class lists so the first num_classes picks cover every class;
    # a class a client already holds is left in the stream for the next client.
    pool: list[int] = []
    assigned = []
    for _ in range(num_clients):
        chosen: list[int] = []
        i = 0
        while len(chosen) < cpc:
            if i >= len(pool):
                pool.extend(int(c) for c in rng.permutation(num_classes))
            if pool[i] in chosen:
                i += 1
            else:
                chosen.append(pool.pop(i))
        assigned.append(sorted(chosen))
    return assigned


def _pathological(
    train_y: np.ndarray,
    num_classes: int,
    num_clients: int,
    classes_per_client: int | None,
    share_low: float,
    share_high: float,
    rng: np.random.Generator,
    weights: np.ndarray,
) -> list[np.ndarray]:
    cpc = classes_per_client if classes_per_client is not None else (2 if num_classes <= 10 else 10)
    if cpc < 1 or cpc > num_classes:
        raise UserError(f"classes_per_client={cpc} must be between 1 and num_classes={num_classes}")
    if num_clients * cpc < num_classes:
        raise UserError(
            f"pathological partition: num_clients={num_clients} x classes_per_client={cpc} "
            f"< num_classes={num_classes}, so some class would be unused"
        )
    if not 0 < share_low <= share_high:
        raise UserError(f"shares must satisfy 0 < share_low <= share_high, got {share_low}, {share_high}")
    classes = _assign_classes(num_classes, num_clients, cpc, rng)
    shares = [rng.uniform(share_low, share_high, size=cpc) * weights[k] for k in range(num_clients)]
    holders: dict[int, list[tuple[int, float]]] = {}
    for k, (cls, sh) in enumerate(zip(classes, shares)):
        for c, s in zip(cls, sh):
            holders.setdefault(c, []).append((k, float(s)))
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(num_classes):
        owners = holders.get(c, [])
        idx = rng.permutation(np.flatnonzero(train_y == c))
        if len(idx) < len(owners):
            raise UserError(
                f"pathological partition: class {c} has {len(idx)} training samples for {len(owners)} clients; "
                "use fewer clients or fewer classes_per_client"
            )
        # One sample each first, so every client really has all of its classes.
        sizes = 1 + _apportion(len(idx) - len(owners), np.array([s for _, s in owners]))
        for (k, _), chunk in zip(owners, np.split(idx, np.cumsum(sizes)[:-1])):
            parts[k].append(chunk)
    return [np.concatenate(p) for p in parts]


def _dirichlet(
    train_y: np.ndarray,
    num_classes: int,
    num_clients: int,
    alpha: float,
    min_samples: int,
    rng: np.random.Generator,
    weights: np.ndarray,
) -> list[np.ndarray]:
    if not alpha > 0:
        raise UserError(f"dirichlet alpha must be > 0, got {alpha}")
    if min_samples < 0:
        raise UserError(f"min_samples must be >= 0, got {min_samples}")
    if num_clients * min_samples > len(train_y):
        raise UserError(
            f"dirichlet partition: num_clients={num_clients} x min_samples={min_samples} "
            f"exceeds the {len(train_y)} training samples"
        )
    by_class = [np.flatnonzero(train_y == c) for c in range(num_classes)]
    for _ in range(_MAX_DIRICHLET_ATTEMPTS):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            if len(idx) == 0:
                continue
            idx = rng.permutation(idx)
            props = rng.dirichlet(np.full(num_clients, alpha)) * weights
            props /= props.sum()
            cuts = np.round(np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) >= min_samples:
            return merged
    raise UserError(
        f"dirichlet partition: no split with every one of num_clients={num_clients} clients holding "
        f">= min_samples={min_samples} samples after {_MAX_DIRICHLET_ATTEMPTS} tries at alpha={alpha}; "
        "raise alpha or lower min_samples/num_clients"
    )


def _matching_test(
    client_train_y: np.ndarray, train_y: np.ndarray, test_y: np.ndarray, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Test indices with the client's train class proportions, sized by the global test/train ratio."""
    train_counts = np.bincount(client_train_y, minlength=num_classes)
    if train_counts.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    total = int(round(train_counts.sum() * len(test_y) / len(train_y)))
    # Classes too rare for one test image still get one; the rest share what is left.
    present = train_counts > 0
    small = present & (total * train_counts / train_counts.sum() < 1)
    rest = present & ~small
    want = small.astype(np.int64)
    want[rest] = np.maximum(_apportion(max(total - int(small.sum()), 0), train_counts[rest]), 1)
    chosen = []
    for c in np.flatnonzero(want):
        pool = np.flatnonzero(test_y == c)
        n = min(int(want[c]), len(pool))  # a class with too few test images gives all it has
        if n:
            chosen.append(rng.choice(pool, size=n, replace=False))
    if not chosen:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)
