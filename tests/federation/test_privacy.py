"""Client-level differential privacy (pfedlora.federation.privacy): clipping, noise, accounting, config."""

from __future__ import annotations

import csv
import math

import pytest
import torch

dp_accounting = pytest.importorskip("dp_accounting")

from pfedlora.algorithms import get_algorithm  # noqa: E402
from pfedlora.algorithms.base import Upload  # noqa: E402
from pfedlora.cli import main  # noqa: E402
from pfedlora.config import build_config  # noqa: E402
from pfedlora.federation.preflight import check_run  # noqa: E402
from pfedlora.errors import UserError  # noqa: E402
from pfedlora.federation import privacy as dp  # noqa: E402
from pfedlora.federation.simulation import run  # noqa: E402

# a few seconds on 2 cores: 4 clients on 400 digits, one small CNN, 2 rounds
TINY = {"num_clients": 4, "rounds": 2, "model_pool": ["cnn5"], "train": {"batch_size": 32},
        "partition": {"kind": "dirichlet"},
        "dataset": {"max_train_samples": 400, "max_test_samples": 200}}
CENTRAL = {"mode": "central", "clip_norm": 0.5, "noise_multiplier": 0.8}


def _payload(generator: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    return {"w": torch.randn(64, 32, generator=generator) * scale, "b": torch.randn(32, generator=generator) * scale}


def _privacy(mode: str, clip: float = 0.5, sigma: float = 0.8, seed: int = 0) -> dp.Privacy:
    return dp.Privacy(mode, clip, sigma, 1e-5, seed)


def _rows(path):
    with open(path / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# ---- clipping ---------------------------------------------------------------------------------


def test_clipping_bounds_every_update_norm_exactly():
    generator = torch.Generator().manual_seed(0)
    broadcast = _payload(generator, 1.0)
    clip = 0.5
    for scale in (1e-4, 1e-3, 0.01, 0.05, 0.1, 1.0, 10.0, 1e3):
        upload = {k: v + d for (k, v), d in zip(broadcast.items(), _payload(generator, scale).values())}
        update = dp.update_of(upload, broadcast)
        norm = dp.l2_norm(update)
        clipped = dp.clip_update(update, clip)
        if norm <= clip:  # inside the ball: untouched
            assert all(torch.equal(clipped[k], update[k]) for k in update)
        else:  # outside: on the sphere, same direction
            assert dp.l2_norm(clipped) == pytest.approx(clip, rel=1e-12)
            assert dp.l2_norm(clipped) <= clip * (1 + 1e-12)
            cosine = sum(float((clipped[k] * update[k]).sum()) for k in update) / (dp.l2_norm(clipped) * norm)
            assert cosine == pytest.approx(1.0, abs=1e-12)
        # the client-side path gives the same bound (no noise in central mode)
        private = _privacy("central", clip).client_update(upload, broadcast, 1, 0)
        assert dp.l2_norm(private) <= clip * (1 + 1e-12)


def test_server_clips_again_in_central_mode_and_weights_uniformly():
    generator = torch.Generator().manual_seed(1)
    broadcast = _payload(generator, 1.0)
    # a client that ignored clipping (norm ~ 100) and one far inside the ball; sample weights differ
    big = {k: v + d for (k, v), d in zip(broadcast.items(), _payload(generator, 10.0).values())}
    small = {k: v + d for (k, v), d in zip(broadcast.items(), _payload(generator, 1e-4).values())}
    privacy = _privacy("central", clip=0.5, sigma=1e-9)
    mean = privacy.mean_update([Upload(0, big, 1000.0), Upload(1, small, 1.0)], broadcast)
    expected = {k: (dp.clip_update(dp.update_of(big, broadcast), 0.5)[k] + dp.update_of(small, broadcast)[k]) / 2
                for k in broadcast}
    for name in broadcast:
        torch.testing.assert_close(mean[name], expected[name], rtol=0, atol=1e-12)
    assert privacy.weight(1000.0) == 1.0 and _privacy("off").weight(1000.0) == 1000.0


# ---- noise scale ------------------------------------------------------------------------------


def _std(update: dict[str, torch.Tensor]) -> tuple[float, float]:
    values = torch.cat([t.flatten() for t in update.values()])
    return float(values.std()), float(values.mean())


@pytest.mark.parametrize("count", [1, 4])
def test_central_noise_has_std_sigma_clip_over_count(count):
    """A statistical test with a fixed seed: zero updates, so the released mean is the noise alone.
    With 100k coordinates the sample std is within ~0.5% of the truth; 5% tolerance fails at 2x sigma."""
    broadcast = {"w": torch.zeros(400, 250)}
    uploads = [Upload(k, {"w": torch.zeros(400, 250)}, 1.0) for k in range(count)]
    privacy = _privacy("central", clip=0.5, sigma=0.8)
    released = privacy.release(privacy.mean_update(uploads, broadcast), count, round_index=3)
    std, mean = _std(released)
    expected = 0.8 * 0.5 / count
    assert std == pytest.approx(expected, rel=0.05)
    assert abs(mean) < 5 * expected / math.sqrt(100_000)
    assert not std == pytest.approx(2 * expected, rel=0.05)  # the tolerance separates sigma from 2 sigma
    # deterministic: same (seed, round) -> same noise; another round -> other noise
    again = privacy.release(privacy.mean_update(uploads, broadcast), count, round_index=3)
    other = privacy.release(privacy.mean_update(uploads, broadcast), count, round_index=4)
    assert torch.equal(released["w"], again["w"]) and not torch.equal(released["w"], other["w"])


def test_local_noise_has_std_sigma_clip_on_every_upload():
    broadcast = {"w": torch.zeros(400, 250)}
    privacy = _privacy("local", clip=0.5, sigma=0.8)
    first = privacy.client_update({"w": torch.zeros(400, 250)}, broadcast, round_index=1, client_id=0)
    second = privacy.client_update({"w": torch.zeros(400, 250)}, broadcast, round_index=1, client_id=1)
    for noisy in (first, second):
        std, _ = _std(noisy)
        assert std == pytest.approx(0.8 * 0.5, rel=0.05)
    assert not torch.equal(first["w"], second["w"])  # every client draws its own noise
    # the server adds nothing more in local mode
    mean = privacy.mean_update([Upload(0, first, 1.0)], broadcast)
    assert torch.equal(privacy.release(mean, 1, 1)["w"], mean["w"])


# ---- accounting -------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction,accountant", [(1.0, "rdp"), (0.5, "rdp"), (1.0, "pld"), (0.3, "pld")])
def test_epsilon_equals_the_library_computation(fraction, accountant):
    config = build_config(TINY | {"num_clients": 10, "fraction": fraction, "rounds": 20,
                                  "privacy": CENTRAL | {"accountant": accountant}})
    for rounds in (1, 7, 20):
        library = (dp_accounting.rdp.RdpAccountant() if accountant == "rdp" else dp_accounting.pld.PLDAccountant())
        event = dp_accounting.GaussianDpEvent(0.8)
        if fraction < 1:
            event = dp_accounting.PoissonSampledDpEvent(fraction, event)
        library.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
        assert dp.epsilon(config, rounds) == pytest.approx(library.get_epsilon(0.1), rel=1e-9)


def test_epsilon_of_full_participation_matches_the_analytic_gaussian():
    """Independent check: T rounds of the Gaussian mechanism (sigma) = one with sigma / sqrt(T)."""
    config = build_config(TINY | {"num_clients": 10, "rounds": 20, "privacy": CENTRAL | {"accountant": "pld",
                                                                                      "delta": 1e-5}})
    exact = dp_accounting.get_epsilon_gaussian(0.8 / math.sqrt(20), 1e-5)
    assert dp.epsilon(config, 20) == pytest.approx(exact, rel=1e-3)
    # RDP is an upper bound on the exact value
    rdp = build_config(TINY | {"num_clients": 10, "rounds": 20, "privacy": CENTRAL | {"delta": 1e-5}})
    assert dp.epsilon(rdp, 20) >= exact


def test_local_epsilon_is_the_unsampled_gaussian_at_half_the_multiplier():
    config = build_config(TINY | {"num_clients": 10, "fraction": 0.5, "rounds": 6,
                                  "privacy": CENTRAL | {"mode": "local"}})
    count = dp.participations(config, 6)
    assert 3 <= count <= 6
    library = dp_accounting.rdp.RdpAccountant()
    library.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.4), count))
    assert dp.epsilon(config, 6) == pytest.approx(library.get_epsilon(0.1), rel=1e-9)


def test_target_epsilon_sets_the_smallest_sufficient_noise():
    config = build_config(TINY | {"num_clients": 10, "rounds": 20, "privacy": {
        "mode": "central", "clip_norm": 1.0, "target_epsilon": 8.0, "delta": 1e-5}})
    sigma = dp.resolved_noise_multiplier(config)
    assert dp.epsilon(config, 20, sigma) <= 8.0
    assert dp.epsilon(config, 20, sigma * 0.999) > 8.0
    assert dp.Privacy.from_config(config).noise_multiplier == sigma


# ---- config refusals (one line, exit 2) -------------------------------------------------------


@pytest.mark.parametrize("overrides,message", [
    ({"algorithm": "fedproto"}, "algorithm fedproto is not supported"),
    ({"algorithm": "fd"}, "supported: pfedlora, lg_fedavg, fml, fedavg"),
    ({"adapter": {"aggregation": "product", "construction": "factorized"}}, "algorithm pfedlora is not supported with these settings"),
    ({"privacy": CENTRAL | {"clip_norm": 0}}, "privacy.clip_norm"),
    ({"privacy": CENTRAL | {"clip_norm": -1.0}}, "privacy.clip_norm"),
    ({"privacy": {"mode": "central", "noise_multiplier": 1.0}}, "needs clip_norm"),
    ({"privacy": CENTRAL | {"target_epsilon": 1.0}}, "exactly one of noise_multiplier and target_epsilon"),
    ({"privacy": {"mode": "central", "clip_norm": 1.0, "target_epsilon": 1e-9, "delta": 1e-10}},
     "is not reached in 2 rounds"),
])
def test_inconsistent_settings_are_refused(overrides, message):
    document = TINY | {"privacy": CENTRAL} | overrides
    with pytest.raises(UserError, match=message) as error:
        check_run(build_config(document))  # key rules at validation, eligibility at run start
    assert "\n" not in str(error.value)


def test_cli_refuses_before_writing_anything(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--set", "algorithm=fedproto", "--set", "privacy.mode=central",
                 "--set", "privacy.clip_norm=1.0", "--set", "privacy.noise_multiplier=1.0", "--out", str(out)])
    assert code == 2
    assert not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_supported_algorithms_are_the_ones_averaging_uploads():
    config = build_config(TINY)
    assert dp.supported_algorithms(config) == ["pfedlora", "lg_fedavg", "fml", "fedavg"]
    assert not get_algorithm("fedkd").averages_uploads(config)


# ---- end to end -------------------------------------------------------------------------------


def test_off_is_bit_identical_to_no_privacy_section(tmp_path):
    plain = run(build_config(TINY), tmp_path / "plain", log=lambda _: None)
    # `--set privacy.mode=off`: YAML reads a bare off as false, which means off too
    off = run(build_config(TINY | {"privacy": CENTRAL}, ["privacy.mode=off"]), tmp_path / "off", log=lambda _: None)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "plain")) == strip(_rows(tmp_path / "off"))
    assert plain["client_accuracies"] == off["client_accuracies"]
    assert "epsilon" not in _rows(tmp_path / "off")[0] and "epsilon" not in off
    assert (tmp_path / "plain" / "config.yaml").read_text() == (tmp_path / "off" / "config.yaml").read_text()


@pytest.mark.parametrize("mode", ["central", "local"])
def test_private_run_writes_epsilon_and_is_reproducible(tmp_path, mode):
    config = build_config(TINY | {"algorithm": "lg_fedavg", "privacy": CENTRAL | {"mode": mode}})
    summary = run(config, tmp_path / "a", log=lambda _: None)
    rows = _rows(tmp_path / "a")
    assert [float(r["epsilon"]) for r in rows] == pytest.approx([dp.epsilon(config, 1), dp.epsilon(config, 2)])
    assert summary["epsilon"] == pytest.approx(dp.epsilon(config, 2))
    assert summary["privacy"]["mode"] == mode and summary["privacy"]["delta"] == 0.25
    again = run(config, tmp_path / "b", log=lambda _: None)
    assert again["client_accuracies"] == summary["client_accuracies"]
    plain = run(build_config(TINY | {"algorithm": "lg_fedavg"}), tmp_path / "c", log=lambda _: None)
    assert plain["client_accuracies"] != summary["client_accuracies"]  # the noise did change the run


@pytest.mark.parametrize("secagg,message", [
    ({"num_shares": 2}, "num_shares as an int must be > 2"),
    ({"num_shares": 5, "reconstruction_threshold": 5}, "must be < num_shares"),
    ({"reconstruction_threshold": 1.5}, "as a fraction must be <= 1"),
    ({"quantization_range": 2**32}, "quantization_range"),
])
def test_secagg_settings_the_flower_workflow_would_reject_are_refused(secagg, message):
    with pytest.raises(UserError, match=message):
        build_config(TINY | {"flower": {"secagg": {"enabled": True} | secagg}})
    assert build_config(TINY | {"flower": {"secagg": {"enabled": True, "num_shares": 3, "reconstruction_threshold": 2}}})
