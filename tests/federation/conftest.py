"""Fixtures shared by the federation tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def task_identity():
    """Outside a Flower process, messages need the run/node identity a ServerApp process has."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = dict(vars(TaskIdentity))
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0
    yield
    for name in ("_run_id", "_node_id", "_task_id"):
        if name in saved:
            setattr(TaskIdentity, name, saved[name])
