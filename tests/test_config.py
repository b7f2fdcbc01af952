import copy

import pytest

from pfedlora.config import Config, build_config, load_config
from pfedlora.errors import UserError


def test_defaults_are_the_quickstart_and_authors_training_setup():
    config = Config()
    assert config.algorithm == "pfedlora" and config.dataset.name == "digits" and config.num_clients == 10
    assert config.model_pool == ["cnn1", "cnn2", "cnn3", "cnn4", "cnn5"]
    assert config.partition.kind == "pathological"
    assert (config.train.lr, config.train.momentum, config.train.weight_decay, config.train.clip_norm) == (0.01, 0.9, 1e-3, 50.0)
    assert config.client_model(7) == "cnn3"


def test_overrides_are_parsed_as_yaml_values():
    config = build_config({}, ["adapter.rank=4", "adapter.mu=0.25", "model_pool=[cnn1, cnn5]", "fraction=0.5"])
    assert config.adapter.rank == 4 and config.adapter.mu == 0.25
    assert config.model_pool == ["cnn1", "cnn5"] and config.fraction == 0.5


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["adapter.rnak=4"], "unknown key 'adapter.rnak'; valid keys here: reference, construction, rank"),
        (["algorithm=fedfoo"], "unknown algorithm 'fedfoo'; valid: pfedlora"),
        (["model_pool=[cnn1, vgg]"], "unknown model 'vgg'; valid: cnn1"),
        (["adapter.construction=svd"], "adapter.construction: Input should be 'reduced' or 'factorized'"),
        (["fraction=1.5"], "fraction: Input should be less than or equal to 1"),
        (["adapter.rank=0"], "adapter.rank: Input should be greater than or equal to 1"),
        (["client_models=[cnn1]"], "client_models has 1 entries but num_clients is 10"),
        (["rank"], "--set expects KEY=VALUE"),
    ],
)
def test_bad_values_are_one_line_errors_naming_key_and_choices(overrides, expected):
    with pytest.raises(UserError) as info:
        build_config({}, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="cannot be read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rounds: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(listy)


def test_algorithm_sections_are_validated_through_the_registry_and_only_the_runs_own_are_written():
    config = build_config({"algorithm": "fd", "fedtgp": {"lam": 3}, "fd": {"gamma": 0.5}})
    written = config.to_dict()
    assert written["fd"]["gamma"] == 0.5 and config.settings.gamma == 0.5
    # another algorithm's section is checked (a typo stops the run) but cannot change an FD run
    assert "fedtgp" not in written
    with pytest.raises(UserError, match="unknown key 'fedtgp.lamx'; valid keys here: lam"):
        build_config({"algorithm": "fd", "fedtgp": {"lamx": 3}})
    # the sections every config so far carried stay in it, whatever the algorithm
    assert {"adapter", "lg_fedavg", "fd", "fedproto", "fml", "fedkd", "fedgh"} <= set(written)
    assert build_config({"algorithm": "fedtgp", "fedtgp": {"lam": 3}}).to_dict()["fedtgp"]["lam"] == 3
    with pytest.raises(UserError, match="config: fedtgp: expected a mapping of keys"):
        build_config({"fedtgp": 3})


def test_build_config_leaves_the_callers_document_alone():
    document = {"privacy": {"mode": "central", "clip_norm": 1.0, "noise_multiplier": 1.0}, "train": {"lr": 0.05}}
    before = copy.deepcopy(document)
    config = build_config(document, ["train.lr=0.5", "privacy.clip_norm=2.0", "partition.kind=iid"])
    assert config.train.lr == 0.5 and config.privacy.clip_norm == 2.0
    assert document == before  # the nested sections the overrides went into are the caller's still


@pytest.mark.parametrize("overrides, expected", [
    (["num_clients=387682504"], r"num_clients=387682504 exceeds the 1347 training samples.*accepted: 1 to 1347"),
    (["num_clients=60000", "dataset.name=cifar10", "dataset.path=/nonexistent"], r"exceeds the 50000 training"),
    (["num_clients=30", "dataset.max_train_samples=20"], r"exceeds the 20 training samples"),
    (["num_clients=700", "partition.classes_per_client=2"], r"num_clients=700 x classes_per_client=2 exceeds the 1347"),
])
def test_sizes_a_built_in_dataset_cannot_fill_are_refused_from_the_config(overrides, expected):
    with pytest.raises(UserError, match=expected):
        build_config({}, overrides)


def test_an_impossible_num_clients_fails_before_torch_is_imported():
    """The check runs on the raw document: a typo exits in a second, not after seconds of imports."""
    import subprocess
    import sys

    code = ("import sys\nfrom pfedlora.config import load_config\nfrom pfedlora.errors import UserError\n"
            "try:\n    load_config(None, ['num_clients=387682504'])\nexcept UserError as e:\n    print(e)\n"
            "print('torch' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "exceeds the 1347 training samples" in out and out.strip().endswith("False False")


def test_rounds_times_clients_per_round_is_bounded():
    with pytest.raises(UserError, match=r"rounds=20000000 x 10 clients per round exceeds 1e\+08 .*rounds up to 10000000"):
        build_config({}, ["rounds=20000000"])
    assert build_config({}, ["rounds=20000000", "fraction=0.01", "num_clients=100"]).rounds == 20_000_000


def test_sizes_that_memory_grows_with_are_bounded():
    for override, message in (("adapter.rank=5000", "adapter.rank: Input should be less than or equal to 1024"),
                              ("fedgen.hidden_dim=100000", "fedgen.hidden_dim: Input should be less than or equal to 8192")):
        with pytest.raises(UserError, match=message):
            build_config({}, [override])
