"""Every script, and each of its modes, on a stand-in GPU: PyTorch's `meta` device.

A meta tensor has a shape, a dtype and a device but no data, and PyTorch applies CUDA's device
rules to it: `torch.cat` or `torch.stack` of a meta and a CPU tensor fails, as it would with a
CUDA tensor. Returned as the accelerator, it runs each script's real code, and so finds any CPU
tensor mixed into device computations, on a machine without a GPU.

What needs the data (reading a number back to the CPU: `.item()`, `.tolist()`, `.cpu()`,
`float()`...) is answered with ones of the right shape (not zeros: a count read back may divide),
and counted: on a GPU each such read
makes the CPU wait for the GPU's queue of work, so a training loop should read once per epoch,
not once per step.
"""

import json
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.optim.optimizer as optimizer_module
from PIL import Image
from torch.overrides import TorchFunctionMode

from conftest import REPO, all_scripts, load_script, takes_data_dir

# Tensor methods that read a tensor's values back to the CPU.
READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.cpu,
    torch.Tensor.__float__,
    torch.Tensor.__int__,
    torch.Tensor.__bool__,
    torch.Tensor.__index__,
    torch.Tensor.__format__,
}
# Not stubbed: .numpy() (and NumPy's or matplotlib's np.asarray) of a meta tensor fails as it
# does on a GPU ("can't convert ... device type tensor to numpy"): it needs a .cpu() first.
# A loop may read its figures once per epoch, and the progress bar once every 50 steps.
READS_PER_EPOCH, STEPS_PER_READ = 3, 50


def copies_to_cpu(func, args, kwargs):
    targets = [*args[1:], kwargs.get("device")]
    return func is torch.Tensor.to and any(
        isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu" for t in targets
    )


class StandInGPU(TorchFunctionMode):
    """Answers every read of a meta tensor with ones on the CPU, and counts reads and steps
    (calls of backward())."""

    def __init__(self):
        super().__init__()
        self.reads = self.steps = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:
            self.steps += 1
        tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if tensor is not None and tensor.is_meta:
            if func in READS or copies_to_cpu(func, args, kwargs):
                self.reads += 1
                ones = torch.ones(tensor.shape, dtype=tensor.dtype)
                copies = func in (torch.Tensor.to, torch.Tensor.cpu)
                return ones if copies else func(ones, *args[1:], **kwargs)
        return func(*args, **kwargs)


class NoDDP(torch.nn.Module):
    """DistributedDataParallel over one process, for meta weights Gloo cannot broadcast."""

    def __init__(self, module, **_):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


@pytest.fixture
def stand_in_gpu(monkeypatch):
    """Make `meta` the accelerator every script finds; yield the counting mode."""
    monkeypatch.setattr(
        torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("meta")
    )
    monkeypatch.setattr(torch.accelerator, "max_memory_allocated", lambda *a: 0)
    # The device line names the GPU, as torch.cuda.get_device_name() does for CUDA.
    gpu = SimpleNamespace(get_device_name=lambda: "stand-in GPU")
    monkeypatch.setattr(torch, "meta", gpu, raising=False)
    # Fused optimiser kernels run on every GPU type, and have a meta version.
    supported = optimizer_module._get_fused_kernels_supported_devices()
    monkeypatch.setattr(
        optimizer_module, "_get_fused_kernels_supported_devices", lambda: [*supported, "meta"]
    )
    # Autocast has no meta mode: the CUDA one stands in (it leaves meta tensors alone).
    real_autocast = torch.autocast
    monkeypatch.setattr(
        torch,
        "autocast",
        lambda device_type, *a, **k: real_autocast(
            "cuda" if device_type == "meta" else device_type, *a, **k
        ),
    )
    # Gloo cannot carry meta tensors: a group of one needs no collective anyway.
    for collective in ("all_reduce", "broadcast", "barrier"):
        monkeypatch.setattr(dist, collective, lambda *a, **k: None)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    with StandInGPU() as mode:
        yield mode


def run(script, flags, data_dir, tmp_path, mode):
    """Run `script`'s main() with `flags` on the stand-in GPU; return (reads, steps) counted
    inside train_one_epoch and the output folder."""
    module = load_script(script)
    if hasattr(module, "DistributedDataParallel"):
        module.DistributedDataParallel = NoDDP
    counted = dict(reads=0, steps=0)
    train_one_epoch = module.train_one_epoch

    def counting(*args, **kwargs):
        reads, steps = mode.reads, mode.steps
        figures = train_one_epoch(*args, **kwargs)
        counted["reads"] += mode.reads - reads
        counted["steps"] += mode.steps - steps
        return figures

    module.train_one_epoch = counting
    data = ["--data-dir", str(data_dir)] if takes_data_dir(REPO / script) else []
    out_dir = tmp_path / "out"
    module.main([*flags, *data, "--out-dir", str(out_dir)])
    return counted, out_dir / "dry-run" if "--dry-run" in flags else out_dir


SCRIPTS = [str(p.relative_to(REPO)) for p in all_scripts()]


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_on_the_stand_in_gpu(script, data_dir, tmp_path, stand_in_gpu, capsys):
    counted, out_dir = run(script, ["--dry-run"], data_dir, tmp_path, stand_in_gpu)
    assert "device: meta (stand-in GPU)" in capsys.readouterr().out
    assert counted["steps"] >= 1
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["device"] == "meta" and metrics["peak_gpu_memory_mb"] == 0
    # The saved model holds CPU tensors: it loads on a machine without that GPU.
    checkpoint = torch.load(out_dir / "model.pt", weights_only=True)
    devices = {tensor.device.type for tensor in checkpoint["weights"].values()}
    assert devices == {"cpu"}


# Flags that give each training loop many steps on the fixtures (the dry run's tiny batch gives
# one or two), so that a read on every step stands out.
MANY_STEPS = {
    "mnist/fc_mnist.py": ["--batch-size", "2"],
    "mnist/fc_regression.py": ["--batch-size", "2"],
    "mnist/conv_mnist.py": ["--batch-size", "2"],
    "mnist/fashion_mnist_ffnn.py": ["--batch-size", "2"],
    "mnist/fashion_mnist_classifier.py": ["--batch-size", "2"],
    "feedforward_1_hid_nn.py": ["--batch-size", "2"],
    "feedforward_3_hid_nn.py": ["--batch-size", "2"],
    "conv_net_cifar.py": ["--batch-size", "2"],
    "resnet_cifar.py": ["--batch-size", "2"],
    "distributed/conv_net_cifar_ddp.py": ["--batch-size", "2"],
    "RNN/lstm_net_counting_chars.py": ["--batch-size", "2"],
    "RNN/lstm_imdb.py": ["--batch-size", "2"],
    "RNN/lstm_imdb_tbptt.py": ["--batch-size", "2", "--bptt", "5"],
    "RNN/lstm_multilabel.py": ["--batch-size", "2"],
    "transformer/transformer_imdb.py": ["--batch-size", "2"],
    "RNN/lstm_char_lm.py": ["--bptt", "5"],
    "transformer/gpt_char_lm.py": ["--context", "16"],
    "transfer/finetune_images.py": ["--batch-size", "2", "--mode", "finetune"],
}


def test_every_script_has_a_many_steps_setting():
    assert sorted(MANY_STEPS) == sorted(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_training_reads_from_the_device_once_per_epoch(
    script, data_dir, tmp_path, stand_in_gpu, capsys
):
    flags = ["--dry-run", "--epochs", "1", *MANY_STEPS[script]]
    counted, _ = run(script, flags, data_dir, tmp_path, stand_in_gpu)
    steps, reads = counted["steps"], counted["reads"]
    assert steps >= 8, f"only {steps} steps: the count below would prove little"
    assert reads <= READS_PER_EPOCH + steps // STEPS_PER_READ, f"{reads} reads in {steps} steps"


def test_the_stand_in_refuses_a_cpu_tensor_in_a_device_computation(stand_in_gpu):
    """What the stand-in is for: CUDA's rule, applied to meta."""
    on_device = torch.zeros(2, device="meta")
    with pytest.raises(RuntimeError, match="device"):
        torch.stack([on_device.sum(), torch.tensor(2.0)])
    assert float(on_device.sum()) == 1.0 and stand_in_gpu.reads == 1


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# Each script's other modes, after a dry run has written its model.pt: (script, flags).
MODES = [
    ("RNN/lstm_imdb.py", ["--predict", "A wonderful film."]),
    ("RNN/lstm_imdb_tbptt.py", ["--predict", "A wonderful film."]),
    ("RNN/lstm_multilabel.py", ["--predict", "Thank you so much!"]),
    ("transformer/transformer_imdb.py", ["--predict", "A wonderful film."]),
    ("RNN/lstm_char_lm.py", ["--generate", "20", "--prompt", "ROMEO:"]),
    ("transformer/gpt_char_lm.py", ["--generate", "20", "--prompt", "ROMEO:", "--top-k", "5"]),
    ("mnist/fashion_mnist_classifier.py", ["--eval-only", "--checkpoint", "{out}/model.pt"]),
    ("conv_net_cifar.py", ["--predict", "{image}"]),
    ("resnet_cifar.py", ["--predict", "{image}"]),
    ("transfer/finetune_images.py", ["--predict", "{image}"]),
]


@pytest.mark.parametrize("script, flags", MODES, ids=[s for s, _ in MODES])
def test_other_modes_on_the_stand_in_gpu(script, flags, data_dir, tmp_path, stand_in_gpu, capsys):
    _, out_dir = run(script, ["--dry-run"], data_dir, tmp_path, stand_in_gpu)
    module = load_script(script)
    image = tmp_path / "photo.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(image)
    flags = [flag.replace("{out}", str(out_dir)).replace("{image}", str(image)) for flag in flags]
    data = ["--data-dir", str(data_dir)] if "--eval-only" in flags else []
    module.main([*flags, *data, "--out-dir", str(out_dir)])
    assert "device: meta" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["conv_net_cifar.py", "resnet_cifar.py"])
def test_own_images_decoded_once_on_the_stand_in_gpu(script, tmp_path, stand_in_gpu):
    train_on_own_images(load_script(script), tmp_path)


@pytest.mark.parametrize("script", ["conv_net_cifar.py", "resnet_cifar.py"])
def test_own_images_read_from_disk_on_the_stand_in_gpu(
    script, tmp_path, stand_in_gpu, monkeypatch, start_method
):
    """Read by DataLoader worker processes every epoch, started as each platform starts them."""
    module = load_script(script)
    monkeypatch.setattr(module, "IN_MEMORY_LIMIT_MB", 0)
    train_on_own_images(module, tmp_path)


def train_on_own_images(module, tmp_path):
    from test_cifar import write_image_folder

    folder = write_image_folder(tmp_path / "images")
    module.main(["--image-folder", str(folder), "--epochs", "2", "--out-dir", str(tmp_path / "o")])
    checkpoint = torch.load(tmp_path / "o" / "model.pt", weights_only=True)
    assert {t.device.type for t in checkpoint["weights"].values()} == {"cpu"}


@pytest.mark.parametrize("script", ["conv_net_cifar.py", "resnet_cifar.py"])
def test_data_on_the_device_is_batched_without_worker_processes(
    script, data_dir, tmp_path, stand_in_gpu, monkeypatch
):
    """Worker processes cannot read tensors on a GPU (nor pin them): CIFAR-10 held on the device,
    a dry run's few images included, is sliced into batches in the main process."""
    module = load_script(script)
    workers, data_loader = [], module.DataLoader

    def recording(*args, **kwargs):
        workers.append(kwargs.get("num_workers", 0))
        return data_loader(*args, **kwargs)

    monkeypatch.setattr(module, "DataLoader", recording)
    module.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)])
    assert workers and set(workers) == {0}


def test_a_resumed_ddp_run_on_the_stand_in_gpu(data_dir, tmp_path, stand_in_gpu, capsys):
    """Two epochs write snapshot.pt; the same command again resumes from it, on the device."""
    flags = ["--epochs", "2", "--batch-size", "50"]
    run("distributed/conv_net_cifar_ddp.py", flags, data_dir, tmp_path, stand_in_gpu)
    assert (tmp_path / "out" / "snapshot.pt").is_file()
    run("distributed/conv_net_cifar_ddp.py", flags, data_dir, tmp_path, stand_in_gpu)
    assert "resuming from" in capsys.readouterr().out
