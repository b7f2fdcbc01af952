"""CPU seconds and proportional set size of a process and all its descendants, from ``/proc`` (Linux).

Forked workers that have exited but are not reaped yet (a run does not wait for its workers' exit)
still show in their parent's ``children`` list with their CPU times, so summing the live and
zombie descendants plus the reaped children (``RUSAGE_CHILDREN``) counts every worker once.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator


def descendants(root: int) -> Iterator[int]:
    """``root``'s descendants (children, their children, ...), zombies included."""
    pending, seen = [root], {root}
    while pending:
        pid = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    children = [int(p) for p in handle.read().split()]
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            for child in children:
                if child not in seen:
                    seen.add(child)
                    pending.append(child)
                    yield child


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process, its reaped children and its unreaped descendants."""
    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # reaped between the listing and now: counted in RUSAGE_CHILDREN next time
        # utime, stime, and the CPU of its own reaped children
        total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
    return total


def tree_pss_kb(root: int) -> int:
    """Proportional set size summed over ``root`` and its descendants (``smaps_rollup``, as ``smem`` sums
    it): pages shared between them (copy-on-write after fork, mapped files) count once in total."""
    total = 0
    for pid in (root, *descendants(root)):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total
