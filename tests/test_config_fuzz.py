"""Property-based: random config documents, YAML files and --set overrides never crash the loader.

The only acceptable outcomes are a valid Config or a one-line UserError (what the CLI prints).
"""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pfedlora.config import Config, build_config, load_config
from pfedlora.errors import UserError

KNOWN_KEYS = ["algorithm", "seed", "rounds", "num_clients", "fraction", "eval_every", "device", "dataset",
              "partition", "model_pool", "client_models", "train", "adapter", "checkpoint_every", "min_clients",
              "validation", "faults"]
SECTION_KEYS = ["name", "path", "kind", "alpha", "rank", "mu", "lr", "batch_size", "norm_factor", "max_norm",
                "drop_prob", "scale_clients", "scale_factor", "deadline", "nan_clients", "classes_per_client"]

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["cnn1", "cnn5", "pfedlora", "digits", "iid", "auto"]))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(SECTION_KEYS), st.text(max_size=6), st.integers()), inner, max_size=4)),
    max_leaves=12)
_documents = st.dictionaries(st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8), st.integers(), st.none()),
                             _values, max_size=6)
_override = st.builds(lambda key, value: f"{key}={value}",
                      st.one_of(st.sampled_from(KNOWN_KEYS + [f"faults.{k}" for k in SECTION_KEYS]
                                                + [f"train.{k}" for k in SECTION_KEYS]), st.text(max_size=10)),
                      st.text(alphabet=string.printable, max_size=12))


def _clean(call) -> None:
    try:
        config = call()
    except UserError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), message
    else:
        assert isinstance(config, Config)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents, st.lists(_override, max_size=2))
def test_random_documents_and_overrides_load_or_fail_with_one_line(document, overrides):
    _clean(lambda: build_config(document, overrides))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_config_files_load_or_fail_with_one_line(tmp_path, content):
    path = tmp_path / "config.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    _clean(lambda: load_config(path))
