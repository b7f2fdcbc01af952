import subprocess
import sys

from pfedlora.cli import main


def test_bad_key_exits_2_with_one_line(capsys, tmp_path):
    code = main(["run", "--set", "adapter.rnak=3", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "adapter.rnak" in err and "rank" in err
    assert not (tmp_path / "x").exists()


def test_unknown_algorithm_and_missing_config_file(capsys, tmp_path):
    assert main(["run", "--set", "algorithm=nope", "--out", str(tmp_path / "y")]) == 2
    assert "valid: pfedlora" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err


def test_console_script_runs_without_traceback_on_user_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pfedlora.cli", "run", "--set", "fraction=2"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "fraction" in proc.stderr


def test_run_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--set", "num_clients=2", "--set", "partition.kind=iid", "--set", "rounds=1", "--set", "model_pool=[cnn5]",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "final accuracy" in printed and (out / "summary.json").exists()


def test_progress_is_one_line_per_evaluated_round_when_not_a_terminal(tmp_path, capsys):
    # capsys is not a terminal: no progress bar, a line per evaluated round (rounds 2 and 3 here)
    code = main(["run", "--set", "num_clients=2", "--set", "partition.kind=iid", "--set", "rounds=3",
                 "--set", "eval_every=2", "--set", "model_pool=[cnn5]", "--out", str(tmp_path / "run")])
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pfedlora: round ")]
    assert [line.split()[2] for line in lines] == ["2/3", "3/3"]
    assert all("acc " in line and "% " in line and "elapsed" in line and "ETA" in line for line in lines)
    assert lines[-1].endswith("ETA 0 s")
