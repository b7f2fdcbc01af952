"""Per-round computation and communication of a run, and time-to-target.

The simulator feeds each round's :class:`~pfedlora.federation.simulation.RoundResult` (training
stats with measured FLOPs, uploaded and downloaded bytes, server FLOPs) and each evaluation's
FLOPs into a :class:`CostMeter`; every metrics.csv row gets the costs since the previous row
(rounds that are not evaluated carry over) and the cumulative costs. All counts are totals over
the clients of the round; per client per round figures divide by the number of client-rounds
(selected clients summed over rounds).

Definitions (also in the README):

* ``train_flops``: forward+backward FLOPs of every training step of every selected client.
* ``eval_flops``: forward FLOPs of evaluating every client's personalized model.
* ``server_flops``: FLOPs of the server's ``aggregate`` (matmuls, convolutions, SVDs,
  elementwise arithmetic).
* ``up_bytes`` / ``down_bytes``: raw tensor bytes of the uploads / of the broadcast received by
  every selected client, in the wire dtype (:mod:`pfedlora.federation.payload`).
* time-to-target: the first evaluated round whose mean accuracy reaches the target, with the
  cumulative FLOPs (training + server) and bytes (up + down) spent until then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


COST_FIELDS = ("up_bytes", "down_bytes", "train_flops", "eval_flops", "server_flops")


class CostMeter:
    """Accumulates a run's costs; ``row()`` gives the metrics.csv columns, ``totals()`` the summary keys."""

    def __init__(self, payload_dtype: str = "float32") -> None:
        self.payload_dtype = payload_dtype
        self.pending = dict.fromkeys(COST_FIELDS, 0)
        self.cumulative = dict.fromkeys(COST_FIELDS, 0)
        self.client_rounds = 0
        self.rounds = 0

    def _add(self, name: str, value: int) -> None:
        self.pending[name] += int(value)
        self.cumulative[name] += int(value)

    def add_round(self, result: Any) -> None:
        """Costs of one round from its ``RoundResult``."""
        train = sum(s.flops for stats in result.stats.values() for s in stats)
        self._add("train_flops", train)
        self._add("up_bytes", result.up_bytes)
        self._add("down_bytes", result.down_bytes)
        self._add("server_flops", result.server_flops)
        self.client_rounds += len(result.selected)
        self.rounds += 1

    def add_evaluation_flops(self, flops: int) -> None:
        """The FLOPs of evaluating one client (``flops.evaluation_flops``, counted where it ran)."""
        self._add("eval_flops", flops)

    def row(self) -> dict[str, int]:
        """Costs since the previous row, then cumulative; resets the since-previous counters."""
        row = dict(self.pending) | {f"cum_{name}": value for name, value in self.cumulative.items()}
        self.pending = dict.fromkeys(COST_FIELDS, 0)
        return row

    def totals(self) -> dict[str, Any]:
        per_client = max(self.client_rounds, 1)
        return {
            "payload_dtype": self.payload_dtype,
            **{f"total_{name}": value for name, value in self.cumulative.items()},
            "client_rounds": self.client_rounds,
            "up_bytes_per_client_round": self.cumulative["up_bytes"] / per_client,
            "down_bytes_per_client_round": self.cumulative["down_bytes"] / per_client,
            "train_flops_per_client_round": self.cumulative["train_flops"] / per_client,
            "server_flops_per_round": self.cumulative["server_flops"] / max(self.rounds, 1),
        }

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: everything needed to continue the cumulative counts."""
        return {"pending": dict(self.pending), "cumulative": dict(self.cumulative),
                "client_rounds": self.client_rounds, "rounds": self.rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.pending = dict(state["pending"])
        self.cumulative = dict(state["cumulative"])
        self.client_rounds = int(state["client_rounds"])
        self.rounds = int(state["rounds"])


def time_to_target(history: Iterable[Mapping[str, float]], target: float) -> dict[str, Any] | None:
    """The first row whose ``mean_acc`` reaches ``target`` (percent): its round and the
    cumulative FLOPs (training + server) and bytes (up + down) up to it; None if never reached."""
    for row in history:
        if row["mean_acc"] >= target:
            return {
                "target": float(target),
                "round": int(row["round"]),
                "flops": int(row.get("cum_train_flops", 0) + row.get("cum_server_flops", 0)),
                "bytes": int(row.get("cum_up_bytes", 0) + row.get("cum_down_bytes", 0)),
            }
    return None
