"""The FLOP counter matches torch's FlopCounterMode without importing torch._dynamo; counts persist on
disk by key digest, and forked workers leave the writing to their parent."""

import json
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from pfedlora.metrics import flops
from pfedlora.models.cnn import CNN, CNN_SPECS


def test_op_counter_counts_what_flop_counter_mode_counts():
    torch.manual_seed(0)
    model = CNN(CNN_SPECS["cnn5"], 3, 10)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with flops.counting() as ours:
        F.cross_entropy(model(x), y).backward()
    with FlopCounterMode(display=False) as theirs:
        F.cross_entropy(model(x), y).backward()
    assert ours.get_total_flops() == theirs.get_total_flops() > 0
    rows = [torch.randn(6, 5) for _ in range(3)]

    def aggregate():
        return (torch.stack(rows).sum(0) / 3) @ rows[0].T

    _, counted = flops.count_server_flops(aggregate)
    with FlopCounterMode(display=False, custom_mapping=flops.ELEMENTWISE_FLOPS) as reference:
        aggregate()
    assert counted == reference.get_total_flops() > 2 * 6 * 5 * 6  # the product plus the elementwise sum and division


def test_counting_does_not_import_dynamo():
    # torch's dispatch modes import torch._dynamo (1.3-1.6 s) on their first operator; ours must not
    code = ("import sys, torch; from pfedlora.metrics import flops; import torch.nn.functional as F\n"
            "with flops.counting() as c: F.linear(torch.randn(2, 3), torch.randn(4, 3)).sum()\n"
            "flops.count_server_flops(lambda: torch.ones(3) + 1)\n"
            "print(c.get_total_flops(), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["48", "False"]


def test_counts_persist_by_digest_and_workers_do_not_write(tmp_path, monkeypatch):
    monkeypatch.setenv("PFEDLORA_CACHE", str(tmp_path))
    monkeypatch.setattr(flops, "_DISK", None)
    monkeypatch.setattr(flops, "_DISK_WRITER", True)
    monkeypatch.setattr(flops, "_STEP_CACHE", {})
    monkeypatch.setattr(flops, "_FORWARD_CACHE", {})
    linear = torch.nn.Linear(8, 4)
    assert flops.forward_flops(linear, torch.randn(3, 8)) == 2 * 3 * 8 * 4
    [path] = tmp_path.glob("flops-*.json")
    stored = json.loads(path.read_text())
    # the file holds short digests, not the (large) keys
    assert list(stored["forward"].values()) == [192] and all(len(k) == 32 for k in stored["forward"])
    # a new process (no memory) finds it without counting: a poisoned counter would give another number
    monkeypatch.setattr(flops, "_DISK", None)
    monkeypatch.setattr(flops, "_FORWARD_CACHE", {})
    monkeypatch.setattr(flops, "counting", lambda: (_ for _ in ()).throw(AssertionError("counted again")))
    assert flops.forward_flops(linear, torch.randn(3, 8)) == 192
    # a worker keeps its counts in memory; the parent writes them when it merges them
    monkeypatch.setattr(flops, "counting", flops.OpCounter)
    known = flops.cached_keys()
    flops.stop_disk_writes()
    assert flops.forward_flops(linear, torch.randn(5, 8)) == 2 * 5 * 8 * 4
    assert len(json.loads(path.read_text())["forward"]) == 1
    counted = flops.counted_since(known)
    monkeypatch.setattr(flops, "_DISK_WRITER", True)
    flops.merge_counted(counted)
    assert sorted(json.loads(path.read_text())["forward"].values()) == [192, 320]
