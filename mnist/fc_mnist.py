"""A small fully connected network that classifies MNIST digits: the first lesson.

Model:  28x28 pixels flattened to 784 -> Linear(784, 50) -> ReLU -> Linear(50, 10); Adam.
Data:   MNIST: 60,000 training and 10,000 test images of handwritten digits, downloaded by
        torchvision into the top-level data/ folder on first use.
Expect: test accuracy about 0.95 after the default single epoch, which trains in 1-2 s on a
        2-core CPU (benchmarks/README.md).

Run:
    python mnist/fc_mnist.py             # train with the defaults
    python mnist/fc_mnist.py --dry-run   # one tiny batch: checks the set-up in seconds
    python mnist/fc_mnist.py --help      # every flag

Writes metrics.json, curves.png and model.pt into --out-dir. To use the trained model:
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


class Net(nn.Module):
    def __init__(self, hidden=50):
        super().__init__()
        self.hidden = nn.Linear(CHANNELS * SIZE * SIZE, hidden)
        self.out = nn.Linear(hidden, len(CLASSES))

    def forward(self, images):
        # (N, 1, 28, 28) -> (N, 784): this model ignores where pixels are.
        return self.out(F.relu(self.hidden(images.flatten(1))))


def train_one_epoch(model, loader, optimizer, autocast):
    """One pass over the training set: its figures, as trained, and the loss of every step."""
    model.train()
    step_losses, correct = [], 0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for images, labels in tqdm(loader, disable=None):
        with autocast:
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        # The three steps of every training loop: forget the last gradients, compute new
        # ones by backpropagation, and move every weight a little against its gradient.
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_losses.append(loss.item())
        correct += (logits.argmax(1) == labels).sum().item()
    accuracy, loss = correct / len(loader.dataset), sum(step_losses) / len(step_losses)
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
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    accuracy, loss = correct / len(loader.dataset), total_loss / len(loader.dataset)
    return {f"{split}_accuracy": accuracy, f"{split}_loss": loss}


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same initial weights and batch order: the same result on one machine.
    torch.manual_seed(args.seed)
    pick_device_and_precision(args, fp16=False)
    # bf16 runs the matrix maths in 16 bits where the hardware has it (conv_net_cifar.py explains).
    autocast = torch.autocast(args.device.type, torch.bfloat16, enabled=args.precision == "bf16")

    download(args.data_dir)
    train_set, test_set = (load_split(args.data_dir, train, args.device) for train in (True, False))
    if args.dry_run:
        # One epoch of 16 random examples (seeded): several classes, whatever the files' order.
        pick, args.epochs = torch.randperm(len(test_set))[:16].tolist(), 1
        train_set, test_set = Subset(train_set, pick), Subset(test_set, pick)
    print(f"data: {len(train_set)} training and {len(test_set)} test images")
    # A DataLoader deals out batches, shuffled for training. Sampling whole batches of indices
    # lets it slice each batch out of the tensors at once, not gather 64 images one by one.
    shuffled = BatchSampler(RandomSampler(train_set), args.batch_size, drop_last=False)
    train_loader = DataLoader(train_set, sampler=shuffled, batch_size=None)
    test_loader = DataLoader(test_set, batch_size=1000)

    # What rebuilds the model: saved in model.pt beside the weights.
    config = dict(hidden=50)
    model = Net(**config).to(args.device)
    # Adam adapts each weight's step size to its recent gradients: little tuning needed.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    history, step_losses = [], []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train = train_one_epoch(model, train_loader, optimizer, autocast)
        seconds, step_losses = time.perf_counter() - start, step_losses + train.pop("step_losses")
        test = evaluate(model, test_loader, autocast, "test")
        log_epoch(history, epoch=epoch, **train, **test, seconds=seconds)

    write_metrics(args, history, **test)
    save_plots(step_losses, test["test_accuracy"], args.out_dir)
    checkpoint = dict(weights=model.state_dict(), config=config, classes=CLASSES)
    torch.save(checkpoint, args.out_dir / "model.pt")


# ---- plumbing: flags, data, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=1, help="passes over the training set (default 1)")
    add("--batch-size", type=positive(int), default=64, help="images per step (default 64)")
    add("--lr", type=positive(float), default=1e-3, help="Adam's learning rate (default 1e-3)")
    return parse_with_common_flags(p, argv, data="MNIST/raw/", fp16=False)


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
    split = MNIST(data_dir, train=train)
    images = split.data.float().div(255).view(-1, CHANNELS, SIZE, SIZE)
    return TensorDataset(((images - MEAN) / STD).to(device), split.targets.to(device))


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
    add = p.add_argument
    add("--seed", type=int, default=0, help="random seed (default 0): README says what it repeats")
    add("--device", default="auto", choices="auto cpu cuda mps xpu".split(), help="auto: any GPU")
    formats = ["auto", "fp32", "bf16", "fp16"][: 3 + fp16]
    add("--precision", default="auto", choices=formats, help="number format (default auto)")
    if data:
        add("--data-dir", type=Path, default=TOP / "data", help=f"folder of {data} (default data/)")
    add("--out-dir", type=Path, default=TOP / "runs" / Path(__file__).stem, help="for the results")
    add("--dry-run", action="store_true", help="train and evaluate on one tiny batch, then exit")
    args = p.parse_args(argv)
    signal(SIGINT, lambda *_: sys.exit(f"stopped (Ctrl-C): what was saved is in {args.out_dir}"))
    return p.error(f"--out-dir {args.out_dir} is a file") if args.out_dir.is_file() else args


def positive(kind):
    """An argparse type: a number of `kind` above zero."""

    def parse(text):
        with contextlib.suppress(ValueError):
            if kind(text) > 0:
                return kind(text)
        raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")

    return parse


def pick_device_and_precision(args, fp16=True):
    """Set args.device and args.precision: as asked, or for 'auto' the best the hardware has."""
    found = torch.accelerator.current_accelerator(check_available=True)
    device = torch.device((found or "cpu") if args.device == "auto" else args.device)
    try:
        # One tiny operation: fails now, not mid-run, if the GPU is missing or too old for PyTorch.
        torch.ones(1, device=device).add_(1).item()
    except Exception as err:
        if args.device != "auto":
            sys.exit(f"error: --device {args.device}: {err!r}; use --device cpu")
        print(f"the {device} GPU failed a test ({err!r}): using the CPU")
        device = torch.device("cpu")
    native = (cuda := device.type == "cuda") and torch.cuda.is_bf16_supported(False)
    with contextlib.suppress(Exception):
        native |= device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    best = "bf16" if native else "fp16" if cuda and fp16 else "fp32"
    precision = best if args.precision == "auto" else args.precision
    if precision == "bf16" and cuda and not native:
        sys.exit("error: --precision bf16: this GPU has no native bfloat16; use --precision auto")
    name = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); precision: {precision} (native bf16: {native})")
    args.device, args.precision = device, precision


def log_epoch(history, **figures):
    history.append(figures)
    print("  ".join(f"{name.replace('_', ' ')} {value:.4g}" for name, value in figures.items()))


def write_metrics(args, history, **results):
    """metrics.json: every flag, the results (the first is the headline), each epoch's figures."""
    headline = next(iter(results))
    metrics = dict(script=Path(__file__).name, torch=torch.__version__, **vars(args))
    metrics.update(results, headline=headline, threads=torch.get_num_threads(), history=history)
    metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    print(f"{headline.replace('_', ' ')} {results[headline]:.4f}; results in {args.out_dir}")


if __name__ == "__main__":
    main()
