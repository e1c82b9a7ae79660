"""MNIST as regression: why classification needs a classification loss.

Model:  a single neuron, Linear(784, 1), or with --hidden 10 a small net
        Linear(784, 10) -> ReLU -> Linear(10, 1). It outputs one number, trained with
        mean squared error (MSE) to equal the digit's value (SGD, lr 0.01, momentum 0.9).
        A prediction counts as correct when the output, rounded and clamped to 0..9, equals
        the label.
Data:   MNIST (28x28 images of handwritten digits), downloaded by torchvision into the
        top-level data/ folder on first use; pixels scaled to [0, 1].
Expect: accuracy stalls at about 0.2 for one neuron and about 0.30 with --hidden 10,
        jumping a few points from epoch to epoch however long you train; under a second
        an epoch on a 2-core CPU with native bf16, about 1 s in fp32 (benchmarks/README.md).

Why it stalls: regression treats labels as points on a line, so it assumes a "7" is
closer to an "8" than to a "1" and that a 4-or-9 lookalike should be predicted 6.5.
Digit classes have no such order. A classifier gives every class its own output and
learns a probability for each with cross-entropy (see fc_mnist.py): the same data
then reaches about 0.95.

Run:
    python mnist/fc_regression.py              # train with the defaults
    python mnist/fc_regression.py --dry-run    # a tiny run: checks the set-up in seconds
    python mnist/fc_regression.py --hidden 10  # ten hidden units instead of one neuron

Writes metrics.json, curves.png and model.pt into --out-dir. To use the trained model:
    checkpoint = torch.load("runs/fc_regression/model.pt", weights_only=True)
    model = make_model(**checkpoint["config"])
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
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision.datasets import MNIST
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
CHANNELS, SIZE = 1, 28


def make_model(hidden):
    """One output number: a single neuron, or `hidden` ReLU units first."""
    if hidden == 0:
        return nn.Sequential(nn.Flatten(), nn.Linear(CHANNELS * SIZE * SIZE, 1))
    layers = [nn.Linear(CHANNELS * SIZE * SIZE, hidden), nn.ReLU(), nn.Linear(hidden, 1)]
    return nn.Sequential(nn.Flatten(), *layers)


def predict_digit(outputs):
    """Round the regression output to the nearest digit 0..9."""
    return outputs.float().squeeze(1).round().clamp(0, 9).long()


def train_one_epoch(model, loader, optimizer, autocast):
    """One pass over the training set: its figures, as trained, and the loss of every step."""
    model.train()
    device = next(model.parameters()).device
    step_losses, correct = [], 0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for images, labels in tqdm(loader, disable=None):
        images, labels = images.to(device), labels.to(device)
        with autocast:
            outputs = model(images)
            # The squared distance from the digit's value: 7 is "closer" to 8 than to 1.
            loss = F.mse_loss(outputs.squeeze(1), labels.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_losses.append(loss.detach())
        correct += (predict_digit(outputs) == labels).sum()
    step_losses = torch.stack(step_losses).tolist()
    accuracy, loss = int(correct) / len(loader.dataset), sum(step_losses) / len(step_losses)
    return dict(train_accuracy=accuracy, train_loss=loss, step_losses=step_losses)


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, loader, autocast, split):
    """The model's accuracy and loss on every batch of `loader`, named after the split."""
    model.eval()
    device = next(model.parameters()).device
    total_loss = correct = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with autocast:
            outputs = model(images)
        total_loss += F.mse_loss(outputs.float().squeeze(1), labels.float(), reduction="sum")
        correct += (predict_digit(outputs) == labels).sum()
    accuracy = int(correct) / len(loader.dataset)
    loss = float(total_loss) / len(loader.dataset)
    return {f"{split}_accuracy": accuracy, f"{split}_loss": loss}


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same initial weights and batch order: the same result on the same CPU
    # (GPU runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args, fp16=False)
    # bf16 runs the matrix maths in 16 bits where the hardware has it (conv_net_cifar.py explains).
    autocast = torch.autocast(args.device.type, torch.bfloat16, enabled=args.precision == "bf16")

    download(args.data_dir)
    train_set, test_set = (load_split(args.data_dir, train) for train in (True, False))
    if args.dry_run:
        # One epoch of 16 random examples (seeded): several classes, whatever the files' order.
        pick, args.epochs = torch.randperm(len(test_set))[:16].tolist(), 1
        train_set, test_set = Subset(train_set, pick), Subset(test_set, pick)
    print(f"data: {len(train_set)} training and {len(test_set)} test images")
    # Batches in a new random order every epoch, as in fc_mnist.py.
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)

    model = make_model(args.hidden).to(args.device)
    # SGD with momentum 0.9: each step keeps 90% of the previous step's direction, which
    # speeds it along steady slopes of the loss.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    history, step_losses = [], []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_figures = train_one_epoch(model, train_loader, optimizer, autocast)
        seconds = time.perf_counter() - start
        step_losses += train_figures.pop("step_losses")
        test_figures = evaluate(model, test_loader, autocast, "test")
        log_epoch(history, epoch=epoch, **train_figures, **test_figures, seconds=seconds)

    write_metrics(args, history, **test_figures)
    save_plots(history, step_losses, args.out_dir)
    # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    checkpoint = dict(weights=weights, config=dict(hidden=args.hidden))
    torch.save(checkpoint, args.out_dir / "model.pt")


# ---- plumbing: flags, data, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add(
        "--epochs", type=positive(int), default=20, help="passes over the training set (default 20)"
    )
    add("--batch-size", type=positive(int), default=64, help="images per step (default 64)")
    add("--lr", type=positive(float), default=0.01, help="SGD learning rate (default 0.01)")
    add(
        "--hidden", type=int, default=0, help="hidden ReLU units; 0 (default): one neuron, 784 -> 1"
    )
    args = parse_with_common_flags(p, argv, data="MNIST/raw/", fp16=False)
    if args.hidden < 0:
        p.error(f"argument --hidden: must be 0 or more, got {args.hidden}")
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


def load_split(data_dir, train):
    """One split as a TensorDataset: (N, CHANNELS, SIZE, SIZE) images, decoded once, here, not
    image by image in every epoch, and their labels."""
    dataset = MNIST(data_dir, train=train)
    # Scaled to [0, 1] only: with MSE at lr 0.01, standardised pixels make the steps too big.
    images = dataset.data.float().div(255).view(-1, CHANNELS, SIZE, SIZE)
    return TensorDataset(images, dataset.targets)


def save_plots(history, step_losses, out_dir):
    """curves.png: the loss of every training step, and accuracy per epoch."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(step_losses, linewidth=0.5)
    ax_loss.set(xlabel="training step", ylabel="mean squared error", yscale="log")
    for split in ("train", "test"):
        accuracies = [h[f"{split}_accuracy"] for h in history]
        ax_acc.plot([h["epoch"] for h in history], accuracies, marker="o", label=split)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch)")
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
