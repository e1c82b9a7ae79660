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
    "resnet_cifar.py": "cifar-10-python.tar.gz",
    "mnist/fc_regression.py": "MNIST/raw/train-images-idx3-ubyte.gz",
    "mnist/fc_mnist.py": "MNIST/raw/train-images-idx3-ubyte.gz",
    "mnist/conv_mnist.py": "MNIST/raw/train-images-idx3-ubyte.gz",
    "mnist/fashion_mnist_ffnn.py": "FashionMNIST/raw/train-images-idx3-ubyte.gz",
    "mnist/fashion_mnist_classifier.py": "FashionMNIST/raw/train-images-idx3-ubyte.gz",
    "RNN/lstm_imdb.py": "aclImdb_v1.tar.gz",
    "RNN/lstm_imdb_tbptt.py": "aclImdb_v1.tar.gz",
    "transformer/transformer_imdb.py": "aclImdb_v1.tar.gz",
    "distributed/conv_net_cifar_ddp.py": "cifar-10-python.tar.gz",
    "RNN/lstm_multilabel.py": "goemotions/train.tsv",
    "RNN/lstm_char_lm.py": "tinyshakespeare/input.txt",
    "transformer/gpt_char_lm.py": "tinyshakespeare/input.txt",
    "transfer/finetune_images.py": "cifar-10-python.tar.gz",
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
    # sys.exit(str): exit status 1, the message on stderr.
    assert isinstance(message, str) and message.startswith("error: "), message
    assert "\n" not in message
    return message


@pytest.mark.parametrize("script", DOWNLOADERS, ids=lambda p: str(p.relative_to(REPO)))
def test_no_network_names_file_url_and_folder(script, tmp_path):
    message = run_main_expecting_error(script, tmp_path / "empty", tmp_path / "out")
    # It names the file, where from, and where to put it.
    file_name = downloaded_file(script).split("/")[-1]
    assert file_name in message and "http" in message and str(tmp_path / "empty") in message


@pytest.mark.parametrize(
    "script",
    [s for s in DOWNLOADERS if downloaded_file(s).endswith(".gz")],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_corrupt_download_is_fetched_again(script, tmp_path):
    """A partial download is noticed by its MD5: torchvision fetches it again (with no network,
    that is the one-line error above); the IMDB and DDP scripts say so before trying."""
    partial = tmp_path / "data" / downloaded_file(script)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\x1f\x8b only the first bytes of a download")
    message = run_main_expecting_error(script, tmp_path / "data", tmp_path / "out")
    assert ("could not get" in message and "http" in message) or (
        "MD5" in message and partial.name in message
    )


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
    assert len(result.stderr.strip().splitlines()) == 1


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
    assert "could not get" in message and "ConnectionResetError" in message and "http" in message


@pytest.mark.parametrize("script", ["mnist/fc_mnist.py", "RNN/lstm_imdb.py"])
def test_odd_flag_values_and_paths_are_argparse_errors(script, tmp_path, capsys):
    """A fraction of an epoch says what is expected; an --out-dir that is a file is refused."""
    module = load_script(script)
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--epochs", "1.5"])
    assert exit_info.value.code == 2
    assert "argument --epochs: expected a positive int, got '1.5'" in capsys.readouterr().err
    (tmp_path / "a file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--out-dir", str(tmp_path / "a file")])
    assert exit_info.value.code == 2 and "is a file" in capsys.readouterr().err


def test_ctrl_c_ends_in_one_line(data_dir, script_env, tmp_path):
    """SIGINT while a script trains: one line, no traceback, a non-zero exit."""
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, str(REPO / "RNN" / "lstm_net_counting_chars.py"), "--epochs", "50"]
        + ["--out-dir", str(tmp_path)],
        env=script_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while "data:" not in process.stdout.readline():
        assert time.monotonic() < deadline
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in err
    assert err.strip() == "stopped (Ctrl-C)"
