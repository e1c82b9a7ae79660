"""Device and precision choice on hardware CI does not have (CUDA GPUs old and new, Apple MPS,
CPUs with and without bfloat16), by mocking what each script asks PyTorch; fp16 paths on a CPU."""

import inspect
import subprocess
import sys

import pytest
import torch

from conftest import REPO, all_scripts, load_script

SCRIPTS = {
    str(path.relative_to(REPO)): load_script(path.relative_to(REPO)) for path in all_scripts()
}
ANY_SCRIPT = SCRIPTS["conv_net_cifar.py"]
SHARED = [
    "pick_device",
    "unsupported_gpu",
    "pick_precision",
    "cpu_has_native_bf16",
    "autocast_for",
    "epoch_line",
    "write_metrics",
    "add_common_flags",
    "positive",
    "fail",
    "first_line",
]


@pytest.mark.parametrize("helper", SHARED)
def test_shared_helpers_read_the_same_in_every_script(helper):
    versions = {inspect.getsource(getattr(module, helper)) for module in SCRIPTS.values()}
    assert len(versions) == 1, f"{helper} differs between scripts"


def fake_gpu(
    monkeypatch, capability, arch_list=("sm_75", "sm_80", "sm_90", "sm_100", "compute_120")
):
    """Pretend PyTorch sees one CUDA GPU of this capability, and a build with these kernels."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: f"Fake GPU {capability}")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arch_list))
    native_bf16 = capability >= (8, 0)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16
    )


def fake_cpu_bf16(monkeypatch, answer):
    """The private oneDNN check: True, False, or an exception (as if a release removed it)."""

    def check():
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", check, raising=False)


@pytest.mark.parametrize(
    "capability, expected", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp16")]
)
def test_cuda_precision_follows_native_bf16(monkeypatch, capability, expected):
    fake_gpu(monkeypatch, capability)
    device, why = ANY_SCRIPT.pick_device("auto")
    assert device.type == "cuda" and "Fake GPU" in why
    precision, reason = ANY_SCRIPT.pick_precision("auto", device)
    assert (
        precision == expected
        and reason.startswith("auto:")
        and f"{capability[0]}.{capability[1]}" in reason
    )


def test_bf16_asked_for_on_a_gpu_without_it_is_a_one_line_error(monkeypatch):
    fake_gpu(monkeypatch, (7, 5))
    with pytest.raises(SystemExit) as exit_info:
        ANY_SCRIPT.pick_precision("bf16", torch.device("cuda"))
    assert str(exit_info.value.code).startswith("error: --precision bf16") and "fp16" in str(
        exit_info.value
    )


def test_mps_trains_in_fp32():
    assert ANY_SCRIPT.pick_precision("auto", torch.device("mps"))[0] == "fp32"


@pytest.mark.parametrize(
    "answer, expected",
    [
        (True, "bf16"),
        (False, "fp32"),
        (RuntimeError("no such op"), "fp32"),
        (AttributeError("gone"), "fp32"),
    ],
)
def test_cpu_precision_follows_native_bf16_and_never_crashes(monkeypatch, answer, expected):
    fake_cpu_bf16(monkeypatch, answer)
    assert ANY_SCRIPT.pick_precision("auto", torch.device("cpu"))[0] == expected
    assert ANY_SCRIPT.pick_precision("fp32", torch.device("cpu")) == ("fp32", "as asked")


def test_a_gpu_too_old_for_the_build(monkeypatch):
    fake_gpu(monkeypatch, (6, 1))  # a GTX 10xx; the build starts at sm_75
    device, why = ANY_SCRIPT.pick_device("auto")
    assert (
        device.type == "cpu" and "too old for this PyTorch build" in why
    )  # auto falls back, says so
    with pytest.raises(SystemExit) as exit_info:
        ANY_SCRIPT.pick_device("cuda")
    message = str(exit_info.value.code)
    assert message.startswith("error: the GPU Fake GPU (6, 1) (compute capability 6.1) is too old")
    assert "\n" not in message and "--device cpu" in message


@pytest.mark.parametrize(
    "capability, arch_list, supported",
    [
        ((8, 6), ["sm_80"], True),  # same major: sm_80 machine code runs on 8.6
        ((8, 0), ["sm_86"], False),  # not the other way round
        ((12, 0), ["sm_90", "compute_90"], True),  # newer GPU: PTX is compiled for it
        ((7, 0), ["sm_75", "compute_75"], False),  # a V100 under the CUDA 13 build
        ((9, 0), ["sm_90a"], True),
    ],
)
def test_architecture_matching(monkeypatch, capability, arch_list, supported):
    fake_gpu(monkeypatch, capability, arch_list)
    assert (ANY_SCRIPT.unsupported_gpu() is None) == supported


def test_channels_last_only_where_it_helps():
    for script in ("conv_net_cifar.py", "mnist/conv_mnist.py"):
        source = inspect.getsource(SCRIPTS[script])
        assert (
            'if device.type != "mps":\n'
            "            images = images.contiguous(memory_format=torch.channels_last)" in source
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
    assert "precision: fp16 (as asked)" in result.stdout and "epoch  2" in result.stdout
    assert '"precision": "fp16"' in (tmp_path / "metrics.json").read_text()


@pytest.mark.parametrize(
    "script", ["RNN/lstm_imdb.py", "RNN/lstm_imdb_tbptt.py", "RNN/lstm_net_counting_chars.py"]
)
def test_fp16_lstm_on_the_cpu_is_refused_in_one_line(script, data_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        SCRIPTS[script].main(
            [
                "--precision",
                "fp16",
                "--device",
                "cpu",
                "--dry-run",
                "--data-dir",
                str(data_dir),
                "--out-dir",
                str(tmp_path),
            ]
        )
    assert str(exit_info.value.code).startswith(
        "error: --precision fp16: PyTorch has no float16 LSTM"
    )


def test_lstm_leaves_cuda_autocast_but_keeps_cpu_autocast():
    """Under CUDA autocast cuDNN would run the LSTM in float16: each LSTM script opts out there."""
    for script in ("RNN/lstm_imdb.py", "RNN/lstm_imdb_tbptt.py", "RNN/lstm_net_counting_chars.py"):
        assert 'with torch.autocast("cuda", enabled=False):' in inspect.getsource(SCRIPTS[script])
    model = SCRIPTS["RNN/lstm_imdb.py"].SentimentLSTM(vocab_size=20, embedding=8, hidden=16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cuda", enabled=False):
        outputs, _ = model.lstm(torch.randn(2, 5, 8))
    assert outputs.dtype == torch.bfloat16  # CPU autocast still applies inside


def test_no_non_blocking_copies_from_unpinned_memory():
    for name, module in SCRIPTS.items():
        assert "non_blocking" not in inspect.getsource(module), name
