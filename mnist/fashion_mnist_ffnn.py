"""A configurable feedforward network that classifies FashionMNIST clothes.

Model:  784 inputs -> --num-hidden layers of --hidden-dim units (ReLU, dropout) -> 10 outputs,
        held in an nn.ModuleList so the depth is a setting; log-softmax + negative
        log-likelihood loss (together: cross-entropy), SGD with momentum 0.9.
        Optional regularisation: --weight-decay (L2, done by the optimiser) and --l1
        (added to the loss by hand, which shows how any penalty can be added).
Data:   FashionMNIST, 60,000 training and 10,000 test 28x28 images of 10 kinds of clothing,
        downloaded by torchvision into the top-level data/ folder on first use.
Expect: about 0.89 test accuracy after the default 7 epochs, about 2 s an epoch on a 2-core
        CPU with native bf16, 5 s in fp32 (benchmarks/README.md).

Run:
    python mnist/fashion_mnist_ffnn.py                      # train with the defaults
    python mnist/fashion_mnist_ffnn.py --dry-run            # a tiny run: checks the set-up
    python mnist/fashion_mnist_ffnn.py --num-hidden 4 --l1 1e-5

Writes metrics.json, curves.png and model.pt into --out-dir. To use the trained model:
    checkpoint = torch.load("runs/fashion_mnist_ffnn/model.pt", weights_only=True)
    model = FeedForwardNet(**checkpoint["config"])
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
from torchvision.datasets import FashionMNIST
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
# The dataset, and the mean and std of its training pixels: all below derives from these.
CLASSES = (
    "T-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
)
CHANNELS, SIZE = 1, 28
MEAN, STD = 0.2860, 0.3530


class FeedForwardNet(nn.Module):
    def __init__(self, num_hidden=2, hidden_dim=512, dropout=0.2, l1=0.0):
        super().__init__()
        sizes = [CHANNELS * SIZE * SIZE] + [hidden_dim] * num_hidden
        # A plain Python list would hide the layers from .parameters() and .to(device):
        # nn.ModuleList registers them.
        self.hidden_layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:])
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(sizes[-1], len(CLASSES))
        self.l1 = l1

    def forward(self, images):
        x = images.flatten(1)
        for layer in self.hidden_layers:
            x = self.dropout(F.relu(layer(x)))
        # Log-probabilities, for F.nll_loss. log_softmax then nll_loss is exactly what
        # F.cross_entropy does in one call on raw scores (the other scripts use that).
        return F.log_softmax(self.out(x), dim=1)

    def penalty(self):
        """The L1 penalty: a regulariser is just another term added to the loss."""
        weights = (p for name, p in self.named_parameters() if "weight" in name)
        return self.l1 * sum(w.abs().sum() for w in weights) if self.l1 else 0.0


def train_one_epoch(model, loader, optimizer, scheduler, amp):
    """One pass over the training set: its accuracy and mean loss, as trained."""
    model.train()
    autocast, scaler = amp
    total_loss = correct = 0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for images, labels in tqdm(loader, disable=None):
        with autocast:
            log_probs = model(images)
            loss = F.nll_loss(log_probs, labels) + model.penalty()
        optimizer.zero_grad()
        # The GradScaler does nothing unless the precision is fp16 (conv_net_cifar.py explains).
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach() * len(labels)
        correct += (log_probs.argmax(1) == labels).sum()
    accuracy = int(correct) / len(loader.dataset)
    loss = float(total_loss) / len(loader.dataset)
    return dict(train_accuracy=accuracy, train_loss=loss)


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, loader, autocast, split):
    """The model's accuracy and loss on every batch of `loader`, named after the split."""
    model.eval()
    total_loss = correct = 0
    for images, labels in loader:
        with autocast:
            log_probs = model(images)
        total_loss += F.nll_loss(log_probs.float(), labels, reduction="sum")
        correct += (log_probs.argmax(1) == labels).sum()
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
    test_loader = DataLoader(test_set, batch_size=1000)

    config = dict(num_hidden=args.num_hidden, hidden_dim=args.hidden_dim, dropout=args.dropout)
    model = FeedForwardNet(**config, l1=args.l1).to(args.device)
    # SGD with momentum 0.9 (each step keeps 90% of the previous step's direction: faster along
    # steady slopes); --weight-decay pulls every weight towards 0 each step (L2 regularisation).
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay
    )
    # Decay the rate smoothly to 0: lr 0.1 with momentum 0.9 learns fast early but keeps jumping
    # around the minimum if held; annealing it settles the weights (about +5 points of test
    # accuracy here).
    steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)

    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_figures = train_one_epoch(
            model, train_loader, optimizer, scheduler, (autocast, scaler)
        )
        seconds = time.perf_counter() - start
        test_figures = evaluate(model, test_loader, autocast, "test")
        log_epoch(history, epoch=epoch, **train_figures, **test_figures, seconds=seconds)

    write_metrics(args, history, **test_figures)
    save_plots(history, args.out_dir)
    # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    torch.save(dict(weights=weights, config=config), args.out_dir / "model.pt")


# ---- plumbing: flags, data, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=7, help="passes over the training set (default 7)")
    add("--batch-size", type=positive(int), default=128, help="images per step (default 128)")
    add(
        "--lr",
        type=positive(float),
        default=0.1,
        help="SGD learning rate, annealed to 0 (default 0.1)",
    )
    add("--num-hidden", type=positive(int), default=2, help="number of hidden layers (default 2)")
    add(
        "--hidden-dim", type=positive(int), default=512, help="units per hidden layer (default 512)"
    )
    add("--dropout", type=float, default=0.2, help="dropout after each hidden layer (default 0.2)")
    add("--l1", type=float, default=0.0, help="L1 penalty on the weights, in the loss (default 0)")
    add("--weight-decay", type=float, default=0.0, help="L2 weight decay, by SGD (default 0)")
    args = parse_with_common_flags(p, argv, data="FashionMNIST/raw/")
    if not 0 <= args.dropout < 1:
        p.error(f"argument --dropout: must be in [0, 1), got {args.dropout}")
    if args.l1 < 0 or args.weight_decay < 0:
        p.error("argument --l1/--weight-decay: must not be negative")
    return args


def download(data_dir):
    """The four files into data_dir/FashionMNIST/raw/ on first use; torchvision checks their MD5s.
    No network, a broken connection or a corrupt file ends in one line saying what to do."""
    try:
        for train in (True, False):
            FashionMNIST(data_dir, train=train, download=True)
    except (OSError, RuntimeError, EOFError) as err:
        files = ", ".join(name for name, _ in FashionMNIST.resources)
        raw = data_dir / "FashionMNIST" / "raw"
        url = FashionMNIST.mirrors[0]
        sys.exit(f"error: could not get FashionMNIST ({err!r}): put {files} from {url} in {raw}/")


def load_split(data_dir, train, device):
    """One split as a TensorDataset on `device`: normalised (N, CHANNELS, SIZE, SIZE) images,
    decoded once, here, not image by image in every epoch, and their labels."""
    dataset = FashionMNIST(data_dir, train=train)
    images = (dataset.data.float().div(255).view(-1, CHANNELS, SIZE, SIZE) - MEAN) / STD
    return TensorDataset(images.to(device), dataset.targets.to(device))


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="negative log-likelihood (train: + L1 penalty)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch, with dropout)")
    ax_loss.legend()
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
