"""Device and precision choice on hardware CI does not have (CUDA GPUs old and new, Apple GPUs on
macOS 13 and 14, Intel GPUs, CPUs with and without bfloat16), by mocking what each script asks
PyTorch; fp16 paths on a CPU."""

import inspect
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, all_scripts, load_script

SCRIPTS = {
    str(path.relative_to(REPO)): load_script(path.relative_to(REPO)) for path in all_scripts()
}
ANY_SCRIPT = SCRIPTS["conv_net_cifar.py"]
SHARED = [
    "parse_with_common_flags",
    "positive",
    "pick_device_and_precision",
    "log_epoch",
    "write_metrics",
]
# The three plainest scripts teach the plain training step: no fp16, no GradScaler.
PLAIN = ["feedforward_1_hid_nn.py", "mnist/fc_mnist.py", "mnist/fc_regression.py"]


@pytest.mark.parametrize("helper", SHARED)
def test_shared_helpers_read_the_same_in_every_script(helper):
    versions = {inspect.getsource(getattr(module, helper)) for module in SCRIPTS.values()}
    assert len(versions) == 1, f"{helper} differs between scripts"


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_shared_block_is_at_most_70_lines(script):
    # Counted from its marker line up to the line before `if __name__`, blank lines included.
    lines = (REPO / script).read_text().splitlines()
    start = lines.index("# ---- the same in every script of this collection ----")
    end = lines.index('if __name__ == "__main__":')
    assert end - start <= 70


@pytest.mark.parametrize("script", PLAIN)
def test_the_plainest_scripts_take_the_plain_step(script):
    source = (REPO / script).read_text()
    assert "GradScaler" not in source and "scaler" not in source
    assert "loss.backward()" in source and "optimizer.step()" in source
    args = SCRIPTS[script].parse_args([])
    assert args.precision == ("fp32" if script == FIRST_LESSON else "auto")
    with pytest.raises(SystemExit):
        SCRIPTS[script].parse_args(["--precision", "fp16"])


FIRST_LESSON = "mnist/fc_mnist.py"


def test_the_first_lesson_is_the_plain_loop_in_fp32(capsys):
    source = (REPO / FIRST_LESSON).read_text()
    lesson = source[: source.index("# ---- plumbing")]
    assert len(lesson.splitlines()) <= 120, "the lesson part is at most 120 lines"
    assert "autocast" not in source and "bfloat16" not in source
    assert "shuffle=True" in lesson and "images.to(device), labels.to(device)" in lesson
    with pytest.raises(SystemExit):
        SCRIPTS[FIRST_LESSON].parse_args(["--precision", "bf16"])
    assert "trains in fp32" in capsys.readouterr().err


def fake_gpu(monkeypatch, capability):
    """Pretend PyTorch finds one working CUDA GPU of this capability."""
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda")
    )
    monkeypatch.setattr(torch, "ones", lambda *a, **k: torch.zeros(1))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: f"Fake GPU {capability}")
    native_bf16 = capability >= (8, 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: native_bf16)


def fake_mac(monkeypatch, macos):
    """Pretend PyTorch finds a working Apple GPU (MPS) on this version of macOS."""
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("mps")
    )
    monkeypatch.setattr(torch, "ones", lambda *a, **k: torch.zeros(1))
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda *version: macos >= version)


def choose(module, device="auto", precision="auto"):
    args = SimpleNamespace(device=device, precision=precision)
    module.pick_device_and_precision(args)
    return args.device, args.precision


@pytest.mark.parametrize(
    "capability, expected", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp16")]
)
def test_cuda_precision_follows_native_bf16(monkeypatch, capsys, capability, expected):
    fake_gpu(monkeypatch, capability)
    device, precision = choose(ANY_SCRIPT)
    assert device.type == "cuda" and precision == expected
    assert f"device: cuda (Fake GPU {capability})" in capsys.readouterr().out


def test_a_plain_script_on_an_old_gpu_falls_back_to_fp32(monkeypatch):
    fake_gpu(monkeypatch, (7, 5))
    args = SimpleNamespace(device="auto", precision="auto")
    SCRIPTS["mnist/fc_mnist.py"].pick_device_and_precision(args, fp16=False)
    assert args.precision == "fp32"


@pytest.mark.parametrize(
    "macos, expected", [((13, 6), "fp32"), ((14, 0), "bf16"), ((15, 2), "bf16")]
)
def test_apple_gpus_get_bf16_from_macos_14(monkeypatch, capsys, macos, expected):
    """PyTorch has no torch.mps.is_bf16_supported: MPS has bf16 from macOS 14 on."""
    fake_mac(monkeypatch, macos)
    assert choose(ANY_SCRIPT) == (torch.device("mps"), expected)
    assert f"device: mps (Apple GPU); precision: {expected}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "fake", [lambda m: fake_gpu(m, (7, 5)), lambda m: fake_mac(m, (13, 6))], ids=["T4", "macOS 13"]
)
def test_bf16_asked_for_on_a_gpu_without_it_is_a_one_line_error(monkeypatch, fake):
    fake(monkeypatch)
    with pytest.raises(SystemExit) as exit_info:
        choose(ANY_SCRIPT, precision="bf16")
    assert str(exit_info.value.code).startswith("error: --precision bf16")


def answering(answer):
    """A stand-in for one of PyTorch's CPU checks: returns `answer`, or raises it."""

    def check():
        if isinstance(answer, Exception):
            raise answer
        return answer

    return check


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected",
    [
        (True, False, "bf16"),  # e.g. AMD Zen 4, Intel Cooper Lake
        (False, True, "bf16"),
        (True, True, "bf16"),  # Intel Sapphire Rapids and later
        # AVX-512 without its BF16 instructions (Skylake to Ice Lake): oneDNN still runs bf16,
        # but emulated, slower than fp32.
        (False, False, "fp32"),
        (RuntimeError("no such op"), False, "fp32"),
        (AttributeError("gone"), AttributeError("gone"), "fp32"),
    ],
)
def test_cpu_bf16_only_where_the_instructions_are_native(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", answering(avx512_bf16))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", answering(amx))
    # What the old check said on every AVX-512 CPU: it must not matter.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    assert choose(ANY_SCRIPT, device="cpu") == (torch.device("cpu"), expected)
    assert choose(ANY_SCRIPT, device="cpu", precision="fp32")[1] == "fp32"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_intel_gpus_get_bf16_where_native(monkeypatch, native, expected):
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("xpu")
    )
    monkeypatch.setattr(torch, "ones", lambda *a, **k: torch.zeros(1))
    monkeypatch.setattr(torch.xpu, "is_bf16_supported", lambda *a, **k: native)
    monkeypatch.setattr(torch.xpu, "get_device_name", lambda *a: "Fake Arc")
    assert choose(ANY_SCRIPT) == (torch.device("xpu"), expected)


def test_a_gpu_that_fails_its_test_is_passed_over_or_refused(monkeypatch, capsys):
    """PyTorch reports a GPU, but even a tiny operation fails on it (a GPU too old for this
    build, a broken driver): auto says why and uses the CPU; --device cuda stops in one line.
    On a machine without a GPU the failure is real: there is no driver to run it."""
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda")
    )
    if torch.cuda.is_available():
        monkeypatch.setattr(
            torch,
            "ones",
            lambda *a, **k: (_ for _ in ()).throw(
                RuntimeError("CUDA error: no kernel image is available for execution on the device")
            ),
        )
    device, _ = choose(ANY_SCRIPT)
    assert device.type == "cpu" and "the cuda GPU failed a test" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        choose(ANY_SCRIPT, device="cuda")
    message = str(exit_info.value.code)
    assert message.startswith("error: --device cuda: ") and "--device cpu" in message
    assert "README: Set up" in message and "\n" not in message


def test_channels_last_only_where_it_helps():
    assert 'if device.type != "mps":\n        images = images.contiguous(' in inspect.getsource(
        SCRIPTS["mnist/conv_mnist.py"]
    )
    assert 'if args.device.type != "mps":\n        model = model.to(memory_format=' in (
        inspect.getsource(SCRIPTS["conv_net_cifar.py"])
    )


def test_fp16_with_grad_scaler_trains_a_cnn_on_the_cpu(data_dir, script_env, tmp_path):
    """The GradScaler path really runs: scale, step, update (CPU autocast has fp16 convolutions)."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "conv_net_cifar.py"),
            "--precision",
            "fp16",
            "--epochs",
            "2",
            "--data-dir",
            str(data_dir),
            "--out-dir",
            str(tmp_path),
        ],
        env=script_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "precision: fp16 (" in result.stdout and "epoch 2 " in result.stdout
    assert '"precision": "fp16"' in (tmp_path / "metrics.json").read_text()


LSTM_SCRIPTS = [
    "RNN/lstm_imdb.py",
    "RNN/lstm_imdb_tbptt.py",
    "RNN/lstm_net_counting_chars.py",
    "RNN/lstm_multilabel.py",
]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("script", [*LSTM_SCRIPTS, "RNN/lstm_char_lm.py"])
def test_a_cpu_lstm_format_pytorch_lacks_is_refused_in_one_line(
    script, precision, data_dir, tmp_path, monkeypatch
):
    """No float16 LSTM on any CPU; no bf16 one without AVX-512 (a CPU like that, mocked)."""
    if script.endswith("char_lm.py") and precision == "fp16":
        pytest.skip("lstm_char_lm.py offers no fp16")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    flags = ["--precision", precision, "--device", "cpu", "--dry-run", "--out-dir", str(tmp_path)]
    if "counting" not in script:
        flags += ["--data-dir", str(data_dir)]
    with pytest.raises(SystemExit) as exit_info:
        SCRIPTS[script].main(flags)
    assert exit_info.value.code == (
        f"error: --precision {precision}: PyTorch has no {precision} LSTM on this CPU; "
        "use --precision auto"
    )


def test_lstm_leaves_cuda_autocast_but_keeps_cpu_autocast():
    """Under CUDA autocast cuDNN would run the LSTM in float16: each LSTM script opts out there."""
    for script in LSTM_SCRIPTS:
        assert 'with torch.autocast("cuda", enabled=False):' in inspect.getsource(SCRIPTS[script])
    # oneDNN has a bf16 LSTM on AVX-512 CPUs only (native or emulated bf16).
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("no bf16 LSTM on a CPU without AVX-512")
    model = SCRIPTS["RNN/lstm_imdb.py"].SentimentLSTM(vocab_size=20, embedding=8, hidden=16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cuda", enabled=False):
        outputs, _ = model.lstm(torch.randn(2, 5, 8))
    assert outputs.dtype == torch.bfloat16  # CPU autocast still applies inside


def test_no_non_blocking_copies_from_unpinned_memory():
    for name, module in SCRIPTS.items():
        assert "non_blocking" not in inspect.getsource(module), name
