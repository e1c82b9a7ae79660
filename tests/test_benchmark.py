"""benchmarks/run.py: runs a script as a user would, records what it promises, checks the floor."""

import json
import sys
from types import SimpleNamespace

import pytest

from conftest import REPO, all_scripts, load_script

benchmark = load_script("benchmarks/run.py")


def test_every_script_has_a_benchmark_entry():
    listed = {name for name, *_ in benchmark.TARGETS}
    assert listed == {str(script.relative_to(REPO)) for script in all_scripts()}


def test_seconds_to_floor_counts_training_time_up_to_the_first_epoch_at_the_floor():
    history = [
        dict(seconds=2.0, test_accuracy=0.5),
        dict(seconds=3.0, test_accuracy=0.7),
        dict(seconds=4.0, test_accuracy=0.9),
    ]
    assert benchmark.seconds_to_floor(history, "test_accuracy", 0.7) == 5.0
    assert benchmark.seconds_to_floor(history, "test_accuracy", 0.95) is None
    assert benchmark.seconds_to_floor([dict(seconds=1.5, val_accuracy=0.9)], "val_accuracy", 0.88)
    # A test figure measured only at the end: the validation figure of each epoch stands in.
    per_epoch = [dict(seconds=2.0, val_macro_f1=0.3), dict(seconds=2.0, val_macro_f1=0.5)]
    assert benchmark.seconds_to_floor(per_epoch, "test_macro_f1", 0.43) == 4.0


@pytest.mark.parametrize("floor, passes", [(0.0, True), (1.01, False)])
def test_benchmark_run_end_to_end(floor, passes, data_dir, script_env, tmp_path, monkeypatch):
    """Runs a script as a subprocess, writes JSON and Markdown, and its exit status says whether
    the floor was met (the floor is set here, so both outcomes are checked)."""
    for name in ("FIXTURE_MD5S", "PYTHONPATH"):
        monkeypatch.setenv(name, script_env[name])
    monkeypatch.setattr(benchmark, "TARGETS", [("mnist/fc_mnist.py", floor, 60, None)])
    argv = [
        "--data-dir",
        str(data_dir),
        "--only",
        "mnist/fc_mnist.py",
        "--results-dir",
        str(tmp_path),
    ]
    if passes:
        benchmark.main(argv)
    else:
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(argv)
        assert exit_info.value.code == "error: below the floor: mnist/fc_mnist.py"
    saved = json.loads((tmp_path / "results-cpu.json").read_text())
    (row,) = saved["results"]
    assert row["script"] == "mnist/fc_mnist.py" and row["device"] == "cpu" and row["threads"] >= 1
    assert row["metric"] == "test_accuracy" and row["precision"] in ("fp32", "bf16")
    assert 0 <= row["value"] <= 1 and row["wall_seconds"] > row["train_seconds"] > 0
    assert (
        100 < row["peak_rss_mb"] < 3 * 1024
    )  # the script's own process: torch alone is a few hundred MB
    assert (
        saved["machine"]["cpu"] and saved["machine"]["cores"] >= 1 and "gpu" not in saved["machine"]
    )
    table = (tmp_path / "results-cpu.md").read_text()
    assert "| `mnist/fc_mnist.py` | " in table and "(test accuracy)" in table
    assert ("**missed**" in table) != passes


def test_a_partial_run_replaces_its_rows_and_keeps_the_others_on_the_same_machine():
    def row(script, value, date):
        return dict(script=script, processes=None, value=value, date=date, command=date)

    info = dict(cpu="some CPU", cores=2, python="3.11")
    earlier = dict(machine=info, results=[row("mnist/fc_mnist.py", 0.9, "d1")])
    earlier["results"].append(row("conv_net_cifar.py", 0.7, "d1"))
    new = [row("mnist/fc_mnist.py", 0.95, "d2")]
    rows = benchmark.merged(earlier, new, info)
    assert [(r["script"], r["value"]) for r in rows] == [
        ("mnist/fc_mnist.py", 0.95),
        ("conv_net_cifar.py", 0.7),
    ]
    assert benchmark.merged(earlier, new, dict(info, cpu="another CPU")) == new


def test_headline_figure_is_the_one_metrics_json_names():
    assert benchmark.headline(dict(headline="val_accuracy", val_accuracy=0.9)) == 0.9
    metrics = dict(headline="test_macro_f1", test_macro_f1=0.45, test_accuracy=0.2)
    assert benchmark.headline(metrics) == 0.45


def test_scripts_that_make_their_data_get_no_data_dir():
    for script in benchmark.MAKE_THEIR_DATA:
        assert "data=None" in (REPO / script).read_text()


def test_peak_memory_units_per_platform(monkeypatch):
    usage = SimpleNamespace(ru_maxrss=2 * 2**20)
    monkeypatch.setattr(sys, "platform", "linux")
    assert benchmark.peak_rss_mb(usage) == 2048  # kilobytes
    monkeypatch.setattr(sys, "platform", "darwin")
    assert benchmark.peak_rss_mb(usage) == 2  # bytes
