"""Windows and macOS where Linux can simulate them: a console that is not UTF-8 (a Windows code
page, or the C locale) for --predict - and for printing, and a Windows machine mocked where the DDP
script branches on it. (Apple GPUs mocked: test_devices.py; DataLoader workers started by "spawn",
as on macOS and Windows: the tests that take conftest's start_method.)"""

import argparse
import contextlib
import io
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from conftest import REPO, load_script

TEXT_SCRIPTS = [
    "RNN/lstm_imdb.py",
    "RNN/lstm_imdb_tbptt.py",
    "RNN/lstm_multilabel.py",
    "transformer/transformer_imdb.py",
]
# The encoding Python gets for standard input and output: a pipe or file on Windows (cp1252 on most
# machines), and a Linux C locale; each with the encoding the printed bytes are in.
CONSOLES = {
    "cp1252": ({"PYTHONIOENCODING": "cp1252"}, "cp1252"),
    "C locale": ({"LC_ALL": "C", "PYTHONUTF8": "0"}, "ascii"),
}
# UTF-8 text as a file holds it: curly quotes (the last byte of ” has no cp1252 character),
# accents, a dash, and an emoji, which no code page has.
TEXTS = [
    "“Wonderful” — a café film, naïve and délicieux.",
    "Terrible… I’d not watch it again.",
    "Thank you so much 😍",
]


@pytest.fixture(scope="module", params=TEXT_SCRIPTS)
def trained(request, data_dir, tmp_path_factory):
    """(script, the model.pt of its dry run, what it predicts for TEXTS given as arguments)."""
    module = load_script(request.param)
    out_dir = tmp_path_factory.mktemp("run")
    module.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(out_dir)])
    model = out_dir / "dry-run" / "model.pt"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        module.main(
            ["--checkpoint", str(model), *(f for text in TEXTS for f in ("--predict", text))]
        )
    return request.param, model, predictions(printed.getvalue())


def predictions(output):
    """The predicted classes and probabilities of each printed line (the text echoed after them
    is left out)."""
    return [line.split("  ")[0] for line in output.splitlines() if not line.startswith("device:")]


@pytest.mark.parametrize("console", CONSOLES)
def test_piped_utf8_text_is_read_and_printed_whatever_the_console(
    trained, console, script_env, tmp_path
):
    """`--predict -` reads standard input as UTF-8 (decoded in the console's code page, the curly
    quote stops the run and accents change the prediction); printed to a file, the emoji becomes
    an escape instead of a UnicodeEncodeError."""
    script, model, expected = trained
    env, encoding = CONSOLES[console]
    out = tmp_path / "out.txt"
    with open(out, "wb") as stdout:
        result = subprocess.run(
            [sys.executable, str(REPO / script), "--checkpoint", str(model), "--predict", "-"],
            input="\n".join(TEXTS).encode(),
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=dict(script_env, **env),
            timeout=120,
        )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    printed = out.read_bytes().decode(encoding)
    assert predictions(printed) == expected and len(expected) == len(TEXTS)
    assert "\\U0001f60d" in printed


@pytest.mark.parametrize(
    "stdout",
    [
        lambda: io.TextIOWrapper(io.BytesIO(), encoding="cp1252"),
        # A notebook's output stream (ipykernel's, IDLE's) cannot be reconfigured.
        io.StringIO,
    ],
    ids=["cp1252", "no reconfigure"],
)
def test_the_shared_flags_make_printing_safe(stdout, monkeypatch, tmp_path):
    """Every script parses its flags with parse_with_common_flags (test_devices.py checks that
    it is the same everywhere): after it, printing a character the console lacks cannot fail."""
    stream = stdout()
    monkeypatch.setattr(sys, "stdout", stream)
    script = load_script("conv_net_cifar.py")
    script.parse_with_common_flags(argparse.ArgumentParser(), ["--out-dir", str(tmp_path)], None)
    print("café 😍")
    if hasattr(stream, "buffer"):
        stream.flush()
        assert stream.buffer.getvalue() == "café \\U0001f60d\n".encode("cp1252")


# ---- DDP on a Windows machine, mocked ----

DDP = "distributed/conv_net_cifar_ddp.py"


def fake_windows_gpu(monkeypatch):
    """A CUDA GPU on PyTorch for Windows: no NCCL backend."""
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda")
    )
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 1)
    monkeypatch.setattr(torch.accelerator, "set_device_index", lambda index: None)
    monkeypatch.setattr(torch, "ones", lambda *a, **k: torch.zeros(1))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    available = dist.is_backend_available
    monkeypatch.setattr(dist, "is_backend_available", lambda b: b != "nccl" and available(b))


@pytest.mark.parametrize("backend, expected", [("auto", "gloo"), ("nccl", None)])
def test_ddp_on_a_windows_gpu_takes_gloo_or_says_what_to_do(backend, expected, monkeypatch):
    """--backend auto would pick NCCL, which PyTorch for Windows lacks: Gloo carries the CUDA
    tensors instead. Asked for by name, NCCL is refused in one line."""
    fake_windows_gpu(monkeypatch)
    module = load_script(DDP)
    monkeypatch.setattr(module, "signal", lambda *a: None)
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    args = module.parse_args(["--backend", backend])
    if expected is None:
        with pytest.raises(SystemExit) as exit_info:
            module.start_process_group(args)
        assert (
            exit_info.value.code
            == "error: this PyTorch build has no nccl backend: use --backend auto"
        )
        return
    try:
        ddp = module.start_process_group(args)
        assert ddp.backend == expected and args.device == torch.device("cuda", 0)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("platform, libuv", [("win32", False), ("linux", True)])
def test_the_ddp_store_uses_libuv_except_on_windows(platform, libuv, monkeypatch):
    """PyTorch for Windows is built without libuv, the default server of the processes' store."""
    module = load_script(DDP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with monkeypatch.context() as patch:
        patch.setattr(sys, "platform", platform)
        store = module.rendezvous_store(env, rank=0, size=1, timeout=10)
    assert store.underlying_store.libuvBackend is libuv
