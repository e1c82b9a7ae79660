"""A convolutional network that classifies MNIST digits.

Model:  three 3x3 convolutions (1->32, 32->32, 32->32, no padding), each followed by ReLU
        and 2x2 max-pooling, dropout 0.25 after the 2nd and 3rd, then Linear(32, 10);
        cross-entropy loss, Adam with a one-cycle learning-rate schedule.
        (The tutorial this grew from flattened to 320 features and called F.Dropout, which
        does not exist; the shapes below show why 32 is right.)
Data:   MNIST, 60,000 training and 10,000 test images of handwritten digits,
        downloaded by torchvision into the top-level data/ folder on first use.
Expect: about 0.986 test accuracy after the default 4 epochs, 15-25 s an epoch on a
        2-core CPU (benchmarks/README.md).

Run:
    python mnist/conv_mnist.py             # train with the defaults
    python mnist/conv_mnist.py --dry-run   # a tiny run: checks the set-up in seconds
    python mnist/conv_mnist.py --help      # every flag

Writes metrics.json, curves.png and model.pt into --out-dir. To use the trained model:
    checkpoint = torch.load("runs/conv_mnist/model.pt", weights_only=True)
    model = ConvNet()
    model.load_state_dict(checkpoint["weights"])
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from signal import SIGINT, signal

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Subset, TensorDataset
from torchvision.datasets import MNIST
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
# The dataset, and the mean and std of its training pixels: all below derives from these.
CLASSES = tuple(str(digit) for digit in range(10))
CHANNELS, SIZE = 1, 28
MEAN, STD = 0.1307, 0.3081


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(CHANNELS, 32, 3)
        self.conv2 = nn.Conv2d(32, 32, 3)
        self.conv3 = nn.Conv2d(32, 32, 3)
        # A module (nn.Dropout, not a function), so that model.eval() switches it off.
        self.dropout = nn.Dropout(0.25)
        # Size of the flattened features: a 3x3 convolution without padding takes 2 pixels off
        # each side length, and a 2x2 max-pool halves it (rounding down):
        #   28 -conv-> 26 -pool-> 13 -conv-> 11 -pool-> 5 -conv-> 3 -pool-> 1,
        # so 32 channels x 1 x 1 = 32 features.
        side = SIZE
        for _ in range(3):
            side = (side - 2) // 2
        self.out = nn.Linear(32 * side * side, len(CLASSES))

    def forward(self, images):
        # Shapes for 28x28 inputs: (N, 32, 13, 13), then (N, 32, 5, 5), then (N, 32, 1, 1).
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = self.dropout(F.max_pool2d(F.relu(self.conv2(x)), 2))
        x = self.dropout(F.max_pool2d(F.relu(self.conv3(x)), 2))
        return self.out(x.flatten(1))


def train_one_epoch(model, loader, optimizer, scheduler, amp):
    """One pass over the training set: its figures, as trained, and the loss of every step."""
    model.train()
    autocast, scaler = amp
    step_losses, correct = [], 0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for images, labels in tqdm(loader, disable=None):
        with autocast:
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad()
        # The GradScaler does nothing unless the precision is fp16 (conv_net_cifar.py explains).
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step_losses.append(loss.detach())
        correct += (logits.argmax(1) == labels).sum()
    step_losses = torch.stack(step_losses).tolist()
    accuracy, loss = int(correct) / len(loader.dataset), sum(step_losses) / len(step_losses)
    return dict(train_accuracy=accuracy, train_loss=loss, step_losses=step_losses)


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, loader, autocast, split):
    """The model's accuracy and loss on every batch of `loader`, named after the split."""
    model.eval()
    total_loss = correct = 0
    for images, labels in loader:
        with autocast:
            logits = model(images)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    accuracy = int(correct) / len(loader.dataset)
    loss = float(total_loss) / len(loader.dataset)
    return {f"{split}_accuracy": accuracy, f"{split}_loss": loss}


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same initial weights, dropout and batch order: the same result on the same
    # CPU (GPU runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args)
    # Mixed precision, as conv_net_cifar.py explains: matrix maths in bf16, or in fp16 with a
    # GradScaler that keeps small gradients from vanishing (it does nothing otherwise).
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    autocast = torch.autocast(args.device.type, dtype, enabled=args.precision != "fp32")
    scaler = torch.amp.GradScaler(args.device.type, enabled=args.precision == "fp16")

    download(args.data_dir)
    train_set, test_set = (load_split(args.data_dir, train, args.device) for train in (True, False))
    if args.dry_run:
        # One epoch of 16 random examples (seeded): several classes, whatever the files' order.
        pick, args.epochs = torch.randperm(len(test_set))[:16].tolist(), 1
        train_set, test_set = Subset(train_set, pick), Subset(test_set, pick)
    print(f"data: {len(train_set)} training and {len(test_set)} test images")
    # Whole batches of indices: the DataLoader slices each batch out of the tensors at once.
    shuffled = BatchSampler(RandomSampler(train_set), args.batch_size, drop_last=False)
    train_loader = DataLoader(train_set, sampler=shuffled, batch_size=None)
    # Evaluated 100 images at a time: on a CPU, faster than in batches of 1,000 (smaller
    # activations stay in the CPU's cache).
    test_loader = DataLoader(test_set, batch_size=100)

    model = ConvNet().to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # One-cycle: warm up, then anneal to ~0: a given accuracy in fewer epochs than a fixed rate.
    # It also cycles Adam's beta1 (the momentum of its gradient average), 0.95 -> 0.85 -> 0.95.
    total_steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps)

    history, step_losses = [], []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_figures = train_one_epoch(
            model, train_loader, optimizer, scheduler, (autocast, scaler)
        )
        seconds = time.perf_counter() - start
        step_losses += train_figures.pop("step_losses")
        test_figures = evaluate(model, test_loader, autocast, "test")
        log_epoch(history, epoch=epoch, **train_figures, **test_figures, seconds=seconds)

    write_metrics(args, history, **test_figures)
    save_plots(history, step_losses, args.out_dir)
    # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    torch.save(dict(weights=weights, classes=CLASSES), args.out_dir / "model.pt")


# ---- plumbing: flags, data, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=4, help="passes over the training set (default 4)")
    add("--batch-size", type=positive(int), default=64, help="images per step (default 64)")
    add("--lr", type=positive(float), default=5e-3, help="peak Adam learning rate (default 5e-3)")
    return parse_with_common_flags(p, argv, data="MNIST/raw/")


def download(data_dir):
    """MNIST's four files into data_dir/MNIST/raw/ on first use; torchvision checks their MD5s.
    No network, a broken connection or a corrupt file ends in one line saying what to do."""
    try:
        for train in (True, False):
            MNIST(data_dir, train=train, download=True)
    except (OSError, RuntimeError, EOFError) as err:
        files = ", ".join(name for name, _ in MNIST.resources)
        raw, url = data_dir / "MNIST" / "raw", MNIST.mirrors[0]
        sys.exit(f"error: could not get MNIST ({err!r}): put {files} from {url} in {raw}/")


def load_split(data_dir, train, device):
    """One split as a TensorDataset on `device`: normalised (N, CHANNELS, SIZE, SIZE) images,
    decoded once, here, not image by image in every epoch, and their labels."""
    dataset = MNIST(data_dir, train=train)
    images = (dataset.data.float().div(255).view(-1, CHANNELS, SIZE, SIZE) - MEAN) / STD
    # channels_last (NHWC in memory) is the layout the fast CPU and CUDA convolutions prefer;
    # several MPS kernels do not support it.
    if device.type != "mps":
        images = images.contiguous(memory_format=torch.channels_last)
    return TensorDataset(images.to(device), dataset.targets.to(device))


def save_plots(history, step_losses, out_dir):
    """curves.png: the loss of every training step, and accuracy per epoch."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(step_losses, linewidth=0.5)
    ax_loss.set(xlabel="training step", ylabel="cross-entropy loss", yscale="log")
    for split in ("train", "test"):
        accuracies = [h[f"{split}_accuracy"] for h in history]
        ax_acc.plot([h["epoch"] for h in history], accuracies, marker="o", label=split)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch, with dropout)")
    ax_acc.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


# ---- the same in every script of this collection ----
def parse_with_common_flags(p, argv, data, fp16=True):
    # Output to a file or pipe on Windows is in a code page: what it lacks prints as an escape.
    getattr(sys.stdout, "reconfigure", lambda **_: None)(errors="backslashreplace")
    add = p.add_argument
    add("--seed", type=int, default=0, help="random seed (default 0): README says what it repeats")
    add("--device", default="auto", choices="auto cpu cuda mps xpu".split(), help="auto: any GPU")
    formats = ["auto", "fp32", "bf16", "fp16"][: 3 + fp16]
    add("--precision", default="auto", choices=formats, help="number format (default auto)")
    if data:
        add("--data-dir", type=Path, default=TOP / "data", help=f"folder of {data} (default data/)")
    add("--out-dir", type=Path, default=TOP / "runs" / Path(__file__).stem, help="%(default)s")
    add("--dry-run", action="store_true", help="a few examples, written to OUT_DIR/dry-run/")
    args = p.parse_args(argv)
    args.out_dir /= "dry-run" if args.dry_run and not args.out_dir.is_file() else ""
    signal(SIGINT, lambda *_: sys.exit("stopped (Ctrl-C)"))
    return p.error(f"--out-dir {args.out_dir} is a file") if args.out_dir.is_file() else args


def positive(number):
    def parse(text):
        with contextlib.suppress(ValueError):
            if number(text) > 0:
                return number(text)
        raise argparse.ArgumentTypeError(f"expected a positive {number.__name__}, got {text!r}")

    return parse


def pick_device_and_precision(args, fp16=True):
    found = torch.accelerator.current_accelerator(check_available=True)
    device = torch.device((found or "cpu") if args.device == "auto" else args.device)
    try:
        # One tiny operation: fails now, not mid-run, if the GPU is missing or too old for PyTorch.
        torch.ones(1, device=device).add_(1).item()
    except Exception as err:
        if args.device != "auto":
            sys.exit(f"error: --device {args.device}: {err!r}; use --device cpu, or README: Set up")
        print(f"the {device} GPU failed a test ({err!r}): using the CPU")
        device = torch.device("cpu")
    # Native bf16: Ampere+ NVIDIA, Intel and Apple (macOS 14+) GPUs, CPUs with AVX-512 BF16 or AMX.
    kind, native = device.type, device.type == "mps" and torch.backends.mps.is_macos_or_newer(14, 0)
    with contextlib.suppress(Exception):
        cpu = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        native = cpu if kind == "cpu" else native or getattr(torch, kind).is_bf16_supported(False)
    best = "bf16" if native else "fp16" if kind == "cuda" and fp16 else "fp32"
    args.device, args.precision = device, best if args.precision == "auto" else args.precision
    if args.precision == "bf16" and kind != "cpu" and not native:
        sys.exit(f"error: --precision bf16: this {device} has no native bf16; use --precision auto")
    name = dict(cpu=f"{torch.get_num_threads()} threads", mps="Apple GPU").get(kind)
    name = name or getattr(torch, kind).get_device_name()
    print(f"device: {device} ({name}); precision: {args.precision} (native bf16: {native})")


def log_epoch(history, **figures):
    history.append(figures)
    print("  ".join(f"{name.replace('_', ' ')} {value:.4g}" for name, value in figures.items()))


def write_metrics(args, history, **results):
    headline = next(iter(results))
    metrics = dict(script=Path(__file__).name, torch=torch.__version__, **vars(args))
    metrics.update(results, headline=headline, threads=torch.get_num_threads(), history=history)
    peak = None if args.device.type == "cpu" else torch.accelerator.max_memory_allocated()
    metrics["peak_gpu_memory_mb"] = peak and peak / 2**20
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(f"{headline.replace('_', ' ')} {results[headline]:.4f}; results in {args.out_dir}")


if __name__ == "__main__":
    main()
