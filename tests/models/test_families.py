"""HtFLlib's model families by name: the assignment, the settings, the refusals, the run header, and a
short run of every built-in algorithm on a heterogeneous image family at CIFAR-10 scale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfedlora import registry
from pfedlora.config import DEFAULT_POOL, POOL_10, build_config
from pfedlora.errors import UserError
from pfedlora.federation import footprint
from pfedlora.models.families import FAMILIES, family_pool, parse_member
from pfedlora.models.registry import build_model, parameter_count

# HtFLlib's system/main.py, transcribed: family -> its members in order (the test's own copy of the table)
HTFLLIB = {
    "HtFE-img-2": ["cnn", "resnet18"],
    "HtFE-img-3": ["resnet10", "resnet18", "resnet34"],
    "HtFE-img-4": ["cnn", "googlenet", "mobilenet_v2", "resnet18"],
    "HtFE-img-5": ["googlenet", "mobilenet_v2", "resnet18", "resnet34", "resnet50"],
    "HtFE-img-8": ["cnn", "googlenet", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
    "HtFE-img-9": ["resnet4", "resnet6", "resnet8", "resnet10", "resnet18", "resnet34", "resnet50", "resnet101",
                   "resnet152"],
    "HtM-img-10": ["cnn", "googlenet", "mobilenet_v2", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                   "vit_b16", "vit_b32"],
    "HtFE-txt-2": ["fasttext", "text_lr"],
    "HtFE-txt-4": ["fasttext", "text_lr", "lstm", "bilstm"],
    "HtFE-txt-5-1": ["transformer_l1_h8", "transformer_l2_h8", "transformer_l4_h8", "transformer_l8_h8",
                     "transformer_l16_h8"],
    "HtFE-txt-5-2": ["transformer_l4_h1", "transformer_l4_h2", "transformer_l4_h4", "transformer_l4_h8",
                     "transformer_l4_h16"],
    "HtFE-txt-5-3": ["transformer_l1_h1", "transformer_l2_h2", "transformer_l4_h4", "transformer_l8_h8",
                     "transformer_l16_h16"],
    "HtFE-txt-6": ["fasttext", "lstm", "bilstm", "transformer_l2_h8", "text_lr", "gru"],
    "MLPs": ["mlp", "mlp500", "mlp1000x500", "mlp1000x500x200"],
    "HtFE-sen-8": ["harcnn_s1", "harcnn_s2", "harcnn_s3", "harcnn1_s1", "harcnn1_s2", "harcnn1_s3", "harcnn3_s1",
                   "harcnn3_s2"],
}


@pytest.mark.parametrize("family", sorted(HTFLLIB))
def test_family_members_and_round_robin_assignment(family):
    assert FAMILIES[family].members == HTFLLIB[family]
    members = [f"htfl_{arch}" for arch in HTFLLIB[family]]
    dataset = {"text": "sst2"}.get(FAMILIES[family].kind, "cifar10")
    config = build_config({}, [f"model_family={family}", "num_clients=20", f"dataset.name={dataset}"])
    assert config.model_pool == members
    assert [config.client_model(i) for i in range(20)] == [members[i % len(members)] for i in range(20)]


def test_heterogeneous_heads_assigned_i_mod_4():
    pool = family_pool("HtFE-img-8-HtC-img-4")
    config = build_config({}, ["model_family=HtFE-img-8-HtC-img-4", "num_clients=20", "dataset.name=cifar10"])
    heads = [None, 512, 256, 128]  # Head(hidden_dims=[512]), [512, 512], [512, 256], [512, 128]
    for i in range(20):
        member = parse_member(config.client_model(i))
        assert member.arch == HTFLLIB["HtFE-img-8"][i % 8] and member.head_hidden == heads[i % 4]
    assert len(pool) == 8


def test_feature_dim_is_a_setting_and_the_representation_width():
    config = build_config({}, ["model_family=HtFE-img-2", "feature_dim=128", "dataset.name=cifar10"])
    assert config.model_pool == ["htfl_cnn_f128", "htfl_resnet18_f128"]
    model = build_model(config.model_pool[1], 3, 10, 32)
    assert model.represent(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert build_config(config.to_dict()).to_dict() == config.to_dict()  # config.yaml reloads to the same run


def test_existing_pools_keep_their_names_and_numbers():
    config = build_config({})
    assert config.model_pool == DEFAULT_POOL and "model_family" not in config.to_dict()
    assert "feature_dim" not in config.to_dict()  # configs written before families are unchanged
    assert parameter_count(build_model("resnet8", 3, 10)) != parameter_count(build_model("htfl_resnet8", 3, 10))
    # CNN-1..5 on CIFAR-10: conv 5x5 (3 -> 16), conv 5x5 (16 -> c2), fc1 (c2 x 5 x 5 -> f1), fc2 (-> 500), head
    widths = [(32, 2000), (16, 2000), (32, 1000), (32, 800), (32, 500)]
    expected = [1216 + 16 * c2 * 25 + c2 + 25 * c2 * f1 + f1 + f1 * 500 + 500 + 5010 for c2, f1 in widths]
    assert [parameter_count(build_model(name, 3, 10)) for name in POOL_10[:5]] == expected


@pytest.mark.parametrize(("overrides", "message"), [
    (["model_family=HtFE-img-7"], "unknown model_family 'HtFE-img-7'; valid: HtFE-img-2, HtFE-img-3"),
    (["feature_dim=256"], "feature_dim applies to a model_family"),
    (["model_family=HtFE-img-8", "model_pool=[cnn1]"], "model_family HtFE-img-8 sets model_pool"),
    (["model_family=HtFE-img-8", "client_models=[cnn1]", "num_clients=1"], "remove client_models"),
    (["model_family=HtFE-txt-6", "dataset.name=cifar10"], "does not fit the image dataset"),
    (["model_pool=[htfl_resnet7]"], "unknown model 'htfl_resnet7'"),
])
def test_refusals_are_one_line(overrides, message):
    with pytest.raises(UserError, match=message) as error:
        build_config({}, overrides)
    assert "\n" not in str(error.value)


def test_unknown_family_exits_2_with_the_known_ones(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pfedlora.cli", "run", "--set", "model_family=HtFE-img-7", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and all(family in lines[0] for family in FAMILIES)
    assert not (tmp_path / "run").exists()


def test_memory_store_refused_with_the_figure_and_the_way_out():
    archs = ["htfl_resnet152"] * 20
    init = lambda k: {"w": torch.zeros(58_148_938)}  # noqa: E731  (ResNet-152's parameters, fp32)
    plenty = footprint.check_client_memory("memory", torch.device("cpu"), archs, init, available=lambda d: 10**11)
    assert "4.65 GB in cpu memory" in plenty[0]
    with pytest.raises(UserError, match=r"need 4\.65 GB of cpu memory .* set engine\.client_store: disk"):
        footprint.check_client_memory("memory", torch.device("cpu"), archs, init, available=lambda d: 4 * 10**9)
    on_disk = footprint.check_client_memory("disk", torch.device("cpu"), archs, init, available=lambda d: 10**9)
    assert "on disk" in on_disk[0]


def _cifar_archive() -> Path:
    env = os.environ.get("PFEDLORA_DATA_DIR")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    return (base / "cifar10-jpeg.tar.gz").resolve()


def _family_config(algorithm: str, family: str = "HtFE-img-4", extra: tuple[str, ...] = ()):
    archive = _cifar_archive()
    if not archive.is_file():
        pytest.skip(f"CIFAR-10 archive not found at {archive}: put the shared data there or set PFEDLORA_DATA_DIR")
    return build_config({}, [f"algorithm={algorithm}", f"model_family={family}", "num_clients=4", "rounds=1",
                             "dataset.name=cifar10", f"dataset.path={archive}", "dataset.max_train_samples=256",
                             "dataset.max_test_samples=128", "partition.kind=iid", "train.batch_size=32",
                             "engine.workers=1", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [name for name in registry.names() if name != "fedavg"])
def test_every_algorithm_runs_on_a_heterogeneous_image_family(algorithm, tmp_path):
    """HtFE-img-4 (4-layer CNN, GoogLeNet, MobileNetV2, ResNet-18): 4 clients x 64 CIFAR-10 images, 1 round."""
    from pfedlora.federation.simulation import run

    lines: list[str] = []
    summary = run(_family_config(algorithm), tmp_path / "run", log=lines.append)
    assert 0 <= summary["final_accuracy"] <= 100
    assert not (tmp_path / "run" / "events.log").exists()  # no upload rejected (e.g. a width mismatch)
    assert any(line.startswith("local model htfl_resnet18: 11,181,642 parameters, 74,033,152 forward FLOPs")
               for line in lines)
    assert any(line.startswith("client states: ") for line in lines)


def test_fedavg_refuses_a_heterogeneous_family():
    with pytest.raises(UserError, match="fedavg needs one architecture for every client"):
        _family_config("fedavg")


@pytest.mark.parametrize(("algorithm", "family"), [("lg_fedavg", "HtFE-img-8-HtC-img-4"), ("fedgh", "Res34-HtC-img-4"),
                                                   ("fedgen", "HtM-img-10")])
def test_algorithms_exchanging_the_head_refuse_mixed_head_layouts(algorithm, family):
    with pytest.raises(UserError, match=rf"{algorithm} .* needs one head layout for every client; the pool has"):
        build_config({}, [f"algorithm={algorithm}", f"model_family={family}", "dataset.name=cifar10"])
    build_config({}, [f"algorithm={algorithm}", "model_family=HtFE-img-8", "dataset.name=cifar10"])  # one layout


def test_a_run_that_would_not_fit_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    from pfedlora.federation.simulation import run

    monkeypatch.setattr(footprint, "available_bytes", lambda device: 10_000_000)  # 10 MB free
    config = build_config({}, ["model_family=HtFE-img-2", "rounds=1", "dataset.max_train_samples=200",
                               "engine.workers=1"])
    with pytest.raises(UserError, match=r"clients' states need 0\.\d\d GB of cpu memory .* engine\.client_store: disk"):
        run(config, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run" / "config.yaml").exists()
    disk = build_config(config.to_dict(), ["engine.client_store=disk"])
    lines: list[str] = []
    run(disk, tmp_path / "disk", log=lines.append)  # the way out the message names
    assert any(line.startswith("client states: ") and "on disk" in line for line in lines)
