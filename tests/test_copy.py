"""A script copied alone into an empty folder writes only inside that folder; in the repository
every script shares the top-level data/ and runs/."""

import shutil
import subprocess
import sys

import pytest

from conftest import REPO, load_script


@pytest.mark.parametrize("script", ["mnist/fc_mnist.py", "RNN/lstm_net_counting_chars.py"])
def test_copied_script_writes_only_in_its_own_folder(script, data_dir, script_env, tmp_path):
    home, elsewhere = tmp_path / "project", tmp_path / "cwd"
    home.mkdir(), elsewhere.mkdir()
    copy = home / "train.py"
    shutil.copy(REPO / script, copy)
    shutil.copytree(data_dir / "MNIST", home / "data" / "MNIST")  # as if downloaded on a first run
    # A real run's model in the default --out-dir, which the dry run must leave alone.
    real_run = home / "runs" / "train"
    real_run.mkdir(parents=True)
    (real_run / "model.pt").write_bytes(b"a trained model")
    result = subprocess.run(
        [sys.executable, str(copy), "--dry-run"],
        cwd=elsewhere,
        env=script_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "project"]
    assert list(elsewhere.iterdir()) == []  # nothing in the current directory either
    assert (real_run / "dry-run" / "metrics.json").is_file()
    assert (real_run / "model.pt").read_bytes() == b"a trained model"


@pytest.mark.parametrize("script", ["conv_net_cifar.py", "mnist/conv_mnist.py", "RNN/lstm_imdb.py"])
def test_in_the_repository_scripts_share_the_top_level_folders(script):
    module = load_script(script)
    assert module.TOP == REPO
    args = module.parse_args([])
    assert args.data_dir == REPO / "data" and args.out_dir == REPO / "runs" / module.__name__
