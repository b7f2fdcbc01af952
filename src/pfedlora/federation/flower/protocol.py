"""What the ServerApp and the ClientApp agree on: message contents, record keys, and how the
pfedlora config travels (the server resolves it once and sends it as YAML text, so a SuperNode
needs no config file of its own)."""

from __future__ import annotations

from typing import Any

import yaml

from pfedlora.config import Config, build_config, load_document, QUICKSTART
from pfedlora.errors import UserError

# record keys inside a message's RecordDict
CONFIG = "config"          # ConfigRecord: config YAML, round, client id
PAYLOAD = "payload"        # ArrayRecord: broadcast (server -> client) or upload (client -> server)
METRICS = "metrics"        # MetricRecord: weight, train losses, accuracy
# evaluation MetricRecord keys "diag.<key>": the algorithm's evaluation_metrics (mean over clients -> metrics row)
DIAGNOSTIC_PREFIX = "diag."
INFO = "info"              # ConfigRecord: a node's partition, architecture, data shape

# run-config keys that are not pfedlora config keys
RUN_CONFIG_FILE = "config-file"
RUN_OUT_DIR = "out-dir"
RUN_OVERWRITE = "overwrite"
RESERVED = (RUN_CONFIG_FILE, RUN_OUT_DIR, RUN_OVERWRITE)
LIST_KEYS = ("model_pool", "client_models")  # given as comma-separated strings

# node-config keys read by the ClientApp
NODE_PARTITION = "partition-id"
NODE_NUM_PARTITIONS = "num-partitions"
NODE_MODEL = "model"
NODE_DATASET_PATH = "dataset-path"

# the client's persistent state inside Flower's Context.state
STATE_KEY = "pfedlora-client-state"


def config_from_run_config(run_config: dict[str, Any]) -> tuple[Config, str, bool]:
    """(config, out_dir, overwrite) from a Flower run config.

    ``config-file`` (a pfedlora YAML file; empty = the quickstart) is loaded first, then every other
    key (dotted, e.g. ``train.batch_size``) overrides the config key of that name.
    """
    config_file = str(run_config.get(RUN_CONFIG_FILE, "") or "")
    document = load_document(config_file) if config_file else dict(QUICKSTART)
    document = yaml.safe_load(yaml.safe_dump(document))  # deep copy
    for key, value in run_config.items():
        if key in RESERVED:
            continue
        node = document
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"run config: cannot set {key!r}: {part!r} is not a section")
        if key in LIST_KEYS and isinstance(value, str):
            # Flower run configs hold no lists: "cnn3,cnn4,cnn5"; empty = unset
            value = [part.strip() for part in value.split(",") if part.strip()] or None
        node[leaf] = value
    config = build_config(document)
    out_dir = str(run_config.get(RUN_OUT_DIR, "") or "runs/flower")
    return config, out_dir, bool(run_config.get(RUN_OVERWRITE, False))


def config_to_text(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def config_from_text(text: str) -> Config:
    return build_config(yaml.safe_load(text))
