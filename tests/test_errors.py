"""Bad input gets a one-line error and a non-zero exit, never a traceback."""

import subprocess
import sys

import pytest

from conftest import REPO, all_scripts, load_script

BAD_FLAGS = [
    ["--epochs", "0"],
    ["--lr", "-1"],
    ["--batch-size", "0"],
    ["--device", "tpu"],
    ["--epochs", "many"],
]


@pytest.mark.parametrize("flags", BAD_FLAGS, ids=" ".join)
@pytest.mark.parametrize("script", all_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_bad_flag_values_are_argparse_errors(script, flags, capsys):
    module = load_script(script.relative_to(REPO))
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(flags)
    assert exit_info.value.code == 2
    assert f"argument {flags[0]}" in capsys.readouterr().err


# The file each script downloads first (relative to --data-dir); scripts not listed make their data.
DOWNLOADS = {
    "feedforward_1_hid_nn.py": "cifar-10-python.tar.gz",
    "feedforward_3_hid_nn.py": "cifar-10-python.tar.gz",
    "conv_net_cifar.py": "cifar-10-python.tar.gz",
    "mnist/fc_regression.py": "MNIST/raw/train-images-idx3-ubyte.gz",
    "mnist/fc_mnist.py": "MNIST/raw/train-images-idx3-ubyte.gz",
    "mnist/conv_mnist.py": "MNIST/raw/train-images-idx3-ubyte.gz",
    "mnist/fashion_mnist_ffnn.py": "FashionMNIST/raw/train-images-idx3-ubyte.gz",
    "mnist/fashion_mnist_classifier.py": "FashionMNIST/raw/train-images-idx3-ubyte.gz",
    "RNN/lstm_imdb.py": "aclImdb_v1.tar.gz",
    "RNN/lstm_imdb_tbptt.py": "aclImdb_v1.tar.gz",
    "transformer/transformer_imdb.py": "aclImdb_v1.tar.gz",
    "distributed/conv_net_cifar_ddp.py": "cifar-10-python.tar.gz",
}
MAKES_ITS_DATA = {"RNN/lstm_net_counting_chars.py"}
DOWNLOADERS = [REPO / name for name in DOWNLOADS]


def test_every_script_is_in_the_download_table():
    assert {str(s.relative_to(REPO)) for s in all_scripts()} == set(DOWNLOADS) | MAKES_ITS_DATA


def downloaded_file(script):
    return DOWNLOADS[str(script.relative_to(REPO))]


def run_main_expecting_error(script, data_dir, out_dir):
    module = load_script(script.relative_to(REPO))
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(out_dir)])
    message = exit_info.value.code
    assert isinstance(message, str) and message.startswith("error: "), (
        message
    )  # sys.exit(str): exit status 1
    assert "\n" not in message
    return message


@pytest.mark.parametrize("script", DOWNLOADERS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_network_names_file_url_and_folder(script, tmp_path):
    message = run_main_expecting_error(script, tmp_path / "empty", tmp_path / "out")
    file_name = downloaded_file(script).split("/")[
        -1
    ]  # names the file, where from, and where to put it
    assert file_name in message and "http" in message and str(tmp_path / "empty") in message


@pytest.mark.parametrize("script", DOWNLOADERS, ids=lambda p: str(p.relative_to(REPO)))
def test_corrupt_download_fails_its_checksum(script, tmp_path):
    partial = tmp_path / "data" / downloaded_file(script)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x1f\x8b only the first bytes of a download")
    message = run_main_expecting_error(script, tmp_path / "data", tmp_path / "out")
    assert "MD5" in message and partial.name in message


def test_no_network_as_a_user_sees_it(script_env, tmp_path):
    """The same, end to end: exit status 1 and one line on stderr, no traceback."""
    result = subprocess.run(
        [sys.executable, str(REPO / "conv_net_cifar.py"), "--data-dir", str(tmp_path)],
        env=script_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: could not get CIFAR-10 (URLError")


@pytest.mark.parametrize(
    "script",
    [s for s in DOWNLOADERS if "MNIST" in downloaded_file(s)],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_connection_broken_mid_download_is_one_line(script, tmp_path, monkeypatch):
    """A reset or a read timeout is an OSError, which torchvision's MNIST lets through."""
    from torchvision.datasets import MNIST

    def broken(self):
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(MNIST, "download", broken)  # FashionMNIST inherits it
    message = run_main_expecting_error(script, tmp_path / "data", tmp_path / "out")
    assert "could not get" in message and "ConnectionResetError" in message and "by hand" in message
