"""A SuperNode's own privacy floor and data paths: what a server message may not lower or move.

The federation config reaches a ClientApp inside every server message, so without a floor a node
obeys whatever the server sends: ``privacy.mode: off``, seeded noise the server can regenerate and
subtract, no SecAgg+, or a ``dataset.path`` / ``cache_dir`` of the server's choosing. The node's own
config (``flower-supernode --node-config "..."``) sets the floor; a message whose config asks for
less is refused (:class:`FloorRefusal`): one line in the node's log, an error reply, no upload.

Node-config keys (all optional):

* ``privacy-mode``: ``off`` (no floor, the default), ``central`` (the server's mode must be central
  or local) or ``local`` (it must be local: the node noises its own update);
* ``min-noise-multiplier``: the server's resolved σ (``noise_multiplier``, or the one its
  ``target_epsilon`` gives) must be at least this;
* ``max-clip-norm``: the server's ``clip_norm`` must be at most this;
* ``secure-noise``: the server's ``noise_source`` must be ``secure`` (default: true whenever the node
  sets a privacy floor: ``privacy-mode`` other than off, or either bound above);
* ``require-secagg``: ``flower.secagg.enabled`` must be true, and a plaintext training message is
  refused;
* data: ``dataset-path``, ``cache-dir``, ``allow-outside-paths`` (default false) and ``tokenizer``
  (default ``minilm``) are the node's; the server's ``dataset.path``, ``dataset.cache_dir``,
  ``dataset.allow_outside_paths`` and ``dataset.tokenizer`` must be unset (their defaults) or equal
  the node's, and the node's values are the ones used.
"""

from __future__ import annotations

from typing import Any

from pfedlora.config import Config, build_config
from pfedlora.errors import UserError
from pfedlora.federation.privacy import SECURE, resolved_noise_multiplier

PRIVACY_MODE = "privacy-mode"
MIN_NOISE_MULTIPLIER = "min-noise-multiplier"
MAX_CLIP_NORM = "max-clip-norm"
SECURE_NOISE = "secure-noise"
REQUIRE_SECAGG = "require-secagg"
DATASET_PATH = "dataset-path"
CACHE_DIR = "cache-dir"
ALLOW_OUTSIDE_PATHS = "allow-outside-paths"
TOKENIZER = "tokenizer"
KEYS = (PRIVACY_MODE, MIN_NOISE_MULTIPLIER, MAX_CLIP_NORM, SECURE_NOISE, REQUIRE_SECAGG, DATASET_PATH, CACHE_DIR,
        ALLOW_OUTSIDE_PATHS, TOKENIZER)

_STRENGTH = {"off": 0, "central": 1, "local": 2}  # local: private against the server too
DEFAULT_TOKENIZER = "minilm"


class FloorRefusal(UserError):
    """A server message asks for less than this node's floor; the message names what and the floor."""


def _flag(node_config: dict[str, Any], key: str, default: bool) -> bool:
    value = node_config.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise UserError(f"node config: {key}={value!r} is not a boolean; accepted: true or false")


def _number(node_config: dict[str, Any], key: str) -> float | None:
    if key not in node_config or node_config[key] in ("", None):
        return None
    try:
        value = float(node_config[key])
    except (TypeError, ValueError):
        raise UserError(f"node config: {key}={node_config[key]!r} is not a number; accepted: a number > 0") from None
    if not value > 0:
        raise UserError(f"node config: {key}={value:g}; accepted: a number > 0")
    return value


def _text(node_config: dict[str, Any], key: str) -> str | None:
    value = node_config.get(key)
    return str(value) if value not in (None, "") else None


def privacy_floor(node_config: dict[str, Any]) -> dict[str, Any]:
    """The node's floor, read and checked (UserError for a malformed value)."""
    mode = str(node_config.get(PRIVACY_MODE, "off") or "off")
    if mode not in _STRENGTH:
        raise UserError(f"node config: {PRIVACY_MODE}={mode!r}; accepted: off, central or local")
    min_noise, max_clip = _number(node_config, MIN_NOISE_MULTIPLIER), _number(node_config, MAX_CLIP_NORM)
    any_floor = mode != "off" or min_noise is not None or max_clip is not None
    return {"mode": mode, "min_noise": min_noise, "max_clip": max_clip,
            "secure_noise": _flag(node_config, SECURE_NOISE, any_floor),
            "secagg": _flag(node_config, REQUIRE_SECAGG, False)}


def check_floor(config: Config, node_config: dict[str, Any], *, plaintext_training: bool = False) -> None:
    """Raise :class:`FloorRefusal` when ``config`` (as the server sent it) is below the node's floor;
    ``plaintext_training``: the message is a training round outside SecAgg+."""
    floor = privacy_floor(node_config)
    p = config.privacy
    if _STRENGTH[p.mode] < _STRENGTH[floor["mode"]]:
        accepted = "local" if floor["mode"] == "local" else "central or local"
        raise FloorRefusal(f"the server asks privacy.mode {p.mode}; this node's floor ({PRIVACY_MODE}) accepts "
                           f"{accepted}")
    if floor["min_noise"] is not None:
        sigma = resolved_noise_multiplier(config) if p.mode != "off" else 0.0
        if sigma < floor["min_noise"]:
            raise FloorRefusal(f"the server asks noise multiplier {sigma:g}; this node's floor "
                               f"({MIN_NOISE_MULTIPLIER}) is {floor['min_noise']:g}")
    if floor["max_clip"] is not None and (p.mode == "off" or float(p.clip_norm) > floor["max_clip"]):
        asked = "no clipping (privacy.mode off)" if p.mode == "off" else f"clip_norm {p.clip_norm:g}"
        raise FloorRefusal(f"the server asks {asked}; this node's floor ({MAX_CLIP_NORM}) is {floor['max_clip']:g}")
    if floor["secure_noise"] and p.mode != "off" and p.noise_source != SECURE:
        raise FloorRefusal(f"the server asks privacy.noise_source {p.noise_source} (noise anyone with the config can "
                           f"regenerate); this node accepts only secure ({SECURE_NOISE})")
    if floor["secagg"] and (not config.flower.secagg.enabled or plaintext_training):
        asked = "a plaintext training round" if config.flower.secagg.enabled else "flower.secagg.enabled false"
        raise FloorRefusal(f"the server asks {asked}; this node uploads only through SecAgg+ ({REQUIRE_SECAGG})")


def pin_data_paths(config: Config, node_config: dict[str, Any]) -> Config:
    """``config`` with the node's own data paths; FloorRefusal when the server named others."""
    dataset = config.dataset
    own = {"path": _text(node_config, DATASET_PATH), "cache_dir": _text(node_config, CACHE_DIR),
           "allow_outside_paths": _flag(node_config, ALLOW_OUTSIDE_PATHS, False),
           "tokenizer": _text(node_config, TOKENIZER) or DEFAULT_TOKENIZER}
    defaults = {"path": None, "cache_dir": None, "allow_outside_paths": False, "tokenizer": DEFAULT_TOKENIZER}
    node_keys = {"path": DATASET_PATH, "cache_dir": CACHE_DIR, "allow_outside_paths": ALLOW_OUTSIDE_PATHS,
                 "tokenizer": TOKENIZER}
    for key, value in own.items():
        asked = getattr(dataset, key)
        if asked != defaults[key] and asked != value:
            raise FloorRefusal(f"the server asks dataset.{key} {asked!r}; this node reads only its own ({node_keys[key]}"
                               f"={value!r}); leave dataset.{key} unset in the server's config")
    if all(getattr(dataset, key) == value for key, value in own.items()):
        return config
    document = config.to_dict()
    document["dataset"] = {**dataset.model_dump(), **own}
    return build_config(document)
