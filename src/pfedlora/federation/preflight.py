"""Checks a runtime makes at run start, before anything is written: those that need more than the
config model knows (which algorithms average their uploads, what a runtime supports).

The config validates each key and each algorithm's own settings; privacy eligibility lives here with
the privacy code that depends on it (:func:`pfedlora.federation.privacy.check_privacy_config`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pfedlora.config import Config, build_config
from pfedlora.errors import UserError
from pfedlora.federation.privacy import check_privacy_config


def check_run(config: Config) -> None:
    """Raise UserError (one line, ``config: ...``) when this config cannot run as set."""
    if config.privacy.mode == "off" and not config.flower.secagg.enabled:
        return
    try:
        check_privacy_config(config)
    except ValueError as exc:
        raise UserError(f"config: {exc}") from None


def runnable_config(document: dict[str, Any] | None = None, overrides: Sequence[str] | None = None) -> Config:
    """:func:`pfedlora.config.build_config` plus the run-start checks (compare and sweep plans)."""
    config = build_config(document, list(overrides or []))
    check_run(config)
    return config
