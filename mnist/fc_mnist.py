"""A small fully connected network that classifies MNIST digits: the first lesson.
The whole training loop once, plainly, in fp32: a Dataset, a DataLoader that shuffles, each
batch moved to the device, the three steps of every training loop, evaluation, a saved model.

Model: 784 pixels -> Linear(784, 50) -> ReLU -> Linear(50, 10); Adam. Data: MNIST's 60,000
training and 10,000 test digits, downloaded into the top-level data/ folder on first use.
Expect: test accuracy about 0.95 after the default single epoch, in seconds on a CPU.
Run: python mnist/fc_mnist.py (--dry-run: a tiny run to check the set-up; --help: every flag).
It writes metrics.json, curves.png and model.pt into --out-dir. To use the trained model:
    checkpoint = torch.load("runs/fc_mnist/model.pt", weights_only=True)
    model = Net(**checkpoint["config"])
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
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import MNIST
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
CLASSES = tuple(str(digit) for digit in range(10))
CHANNELS, SIZE = 1, 28
MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self, hidden=50):
        super().__init__()
        self.hidden_layer = nn.Linear(CHANNELS * SIZE * SIZE, hidden)
        self.out = nn.Linear(hidden, len(CLASSES))

    def forward(self, images):
        # (N, 1, 28, 28) -> (N, 784): this model ignores where pixels are.
        return self.out(F.relu(self.hidden_layer(images.flatten(1))))


def train_one_epoch(model, loader, optimizer):
    """One pass over the training set: its figures, as trained, and the loss of every step."""
    # train() and eval() switch dropout and batch norm: none here, but a habit for later models.
    model.train()
    device = next(model.parameters()).device
    step_losses, correct = [], 0
    for images, labels in tqdm(loader, disable=None):
        # The DataLoader hands out CPU tensors: move each batch to where the model is.
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        # cross_entropy takes the raw scores (logits): it applies log-softmax itself.
        loss = F.cross_entropy(logits, labels)
        # The three steps of every training loop: forget the last gradients, compute new
        # ones by backpropagation, and move every weight a little against its gradient.
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # Kept on the device, read once at the end: each read (.item()) makes a GPU wait.
        step_losses.append(loss.detach())
        correct += (logits.argmax(1) == labels).sum()
    step_losses = torch.stack(step_losses).tolist()
    accuracy, loss = int(correct) / len(loader.dataset), sum(step_losses) / len(step_losses)
    return dict(train_accuracy=accuracy, train_loss=loss, step_losses=step_losses)


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, loader, split):
    """The model's accuracy and loss on every batch of `loader`, named after the split."""
    model.eval()
    device = next(model.parameters()).device
    total_loss = correct = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
    count = len(loader.dataset)
    return {f"{split}_accuracy": int(correct) / count, f"{split}_loss": float(total_loss) / count}


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same initial weights and batch order: the same result (README: Seeds).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args, fp16=False)
    train_set, test_set = load_data(args)
    print(f"data: {len(train_set)} training and {len(test_set)} test images")
    # A DataLoader deals out batches of images and labels, in a new random order every epoch.
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)
    config = dict(hidden=50)
    model = Net(**config).to(args.device)
    # Adam adapts each weight's step size to its recent gradients: little tuning needed.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    history, step_losses = [], []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_figures = train_one_epoch(model, train_loader, optimizer)
        seconds = time.perf_counter() - start
        step_losses += train_figures.pop("step_losses")
        test_figures = evaluate(model, test_loader, "test")
        log_epoch(history, epoch=epoch, **train_figures, **test_figures, seconds=seconds)
    write_metrics(args, history, **test_figures)
    save_plots(step_losses, test_figures["test_accuracy"], args.out_dir)
    # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    torch.save(dict(weights=weights, config=config, classes=CLASSES), args.out_dir / "model.pt")


# ---- plumbing: flags, data, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=1, help="passes over the training set (default 1)")
    add("--batch-size", type=positive(int), default=64, help="images per step (default 64)")
    add("--lr", type=positive(float), default=1e-3, help="Adam's learning rate (default 1e-3)")
    args = parse_with_common_flags(p, argv, data="MNIST/raw/", fp16=False)
    # The first lesson computes in fp32 only: conv_net_cifar.py teaches bf16 and fp16.
    if args.precision == "bf16":
        p.error("--precision bf16: this first lesson trains in fp32 (conv_net_cifar.py has bf16)")
    args.precision = "fp32"
    return args


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


def load_data(args):
    """The training and test sets, downloaded on first use; for a dry run, one epoch of 16
    random examples (seeded): several classes, whatever the files' order."""
    download(args.data_dir)
    train_set, test_set = (load_split(args.data_dir, train) for train in (True, False))
    if args.dry_run:
        args.epochs = 1
        train_set, test_set = (
            Subset(s, torch.randperm(len(s))[:16].tolist()) for s in (train_set, test_set)
        )
    return train_set, test_set


def load_split(data_dir, train):
    """One split as a Dataset of normalised (CHANNELS, SIZE, SIZE) images and their labels."""
    dataset = MNIST(data_dir, train=train)
    images = dataset.data.float().div(255).view(-1, CHANNELS, SIZE, SIZE)
    return Digits((images - MEAN) / STD, dataset.targets)


class Digits(Dataset):
    """Images decoded once into one tensor, here, rather than from PIL image by image in every
    epoch (torchvision's MNIST(transform=ToTensor()) does that: an epoch took 8 times as long).
    A torchvision transform for tensors, e.g. transform=RandomRotation(10), applies to each
    image as it is handed out."""

    def __init__(self, images, labels, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, k):
        image = self.images[k]
        return (self.transform(image) if self.transform else image), self.labels[k]


def save_plots(step_losses, test_accuracy, out_dir):
    """curves.png: the loss of every training step (log scale: it falls fast, then slowly)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(step_losses, linewidth=0.5)
    ax.set(xlabel="training step", ylabel="cross-entropy loss", yscale="log")
    ax.set_title(f"test accuracy at the end: {test_accuracy:.4f}")
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
