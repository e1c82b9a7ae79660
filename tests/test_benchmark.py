"""benchmarks/run.py: runs a script as a user would, records what it promises, checks the floor."""

import json
import subprocess
import sys

from conftest import REPO, all_scripts, load_script

benchmark = load_script("benchmarks/run.py")


def test_every_script_has_a_benchmark_entry():
    listed = {name for name, _, _ in benchmark.TARGETS}
    assert listed == {str(script.relative_to(REPO)) for script in all_scripts()}


def test_seconds_to_floor_counts_training_time_up_to_the_first_epoch_at_the_floor():
    history = [
        dict(seconds=2.0, test_accuracy=0.5),
        dict(seconds=3.0, test_accuracy=0.7),
        dict(seconds=4.0, test_accuracy=0.9),
    ]
    assert benchmark.seconds_to_floor(history, 0.7) == 5.0
    assert benchmark.seconds_to_floor(history, 0.95) is None
    assert benchmark.seconds_to_floor([dict(seconds=1.5, val_accuracy=0.9)], 0.88) == 1.5


def test_benchmark_run_end_to_end(data_dir, script_env, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "run.py"),
            "--data-dir",
            str(data_dir),
            "--only",
            "mnist/fc_mnist.py",
            "--results-dir",
            str(tmp_path),
        ],
        env=script_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    saved = json.loads((tmp_path / "results-cpu.json").read_text())
    (row,) = saved["results"]
    assert row["script"] == "mnist/fc_mnist.py" and row["device"] == "cpu" and row["threads"] >= 1
    assert 0 <= row["test_accuracy"] <= 1 and row["wall_seconds"] > row["train_seconds"] > 0
    assert (
        100 < row["peak_rss_mb"] < 3 * 1024
    )  # the script's own process: torch alone is a few hundred MB
    assert saved["machine"]["cpu"] and saved["machine"]["cores"] >= 1
    table = (tmp_path / "results-cpu.md").read_text()
    assert "| `mnist/fc_mnist.py` |" in table
    # A tiny fixture rarely reaches the real floor; either way, the exit status must say which.
    if row["floor_met"]:
        assert result.returncode == 0, result.stderr
    else:
        assert (
            result.returncode == 1
            and "below the accuracy floor: mnist/fc_mnist.py" in result.stderr
        )
        assert "**missed**" in table
