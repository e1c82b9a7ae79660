"""A feedforward network with one hidden layer, trained on CIFAR-10 with data augmentation.

The new idea: every epoch shows each photo mirrored left-right or not, at random (augmentation),
so the network sees more variety than the 50,000 photos hold (see train_one_epoch()).

Model:  each 3x32x32 colour image is flattened to 3,072 numbers, then
        Linear(3072, 512) -> ReLU -> Linear(512, 10).
Data:   CIFAR-10: 50,000 training and 10,000 test 32x32 photos of 10 classes, downloaded by
        torchvision into the top-level data/ folder on first use (170 MB).
Expect: about 0.58 test accuracy after the default 8 epochs, 1-2 s an epoch on a 2-core
        CPU with native bf16, 4-5 s in fp32 (benchmarks/README.md). Chance is 0.10.

Run:
    python feedforward_1_hid_nn.py             # train with the defaults
    python feedforward_1_hid_nn.py --dry-run   # a tiny run: checks the set-up in seconds

Writes metrics.json, curves.png and model.pt into --out-dir. To use the trained model:
    checkpoint = torch.load("runs/feedforward_1_hid_nn/model.pt", weights_only=True)
    model = FeedForwardNet()
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
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset
from torchvision.datasets import CIFAR10
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
# The dataset, and the mean and std of its training pixels: all below derives from these.
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CHANNELS, SIZE, MEAN, STD = 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class FeedForwardNet(nn.Module):
    def __init__(self, hidden=512):
        super().__init__()
        self.hidden_layer = nn.Linear(CHANNELS * SIZE * SIZE, hidden)
        self.out = nn.Linear(hidden, len(CLASSES))

    def forward(self, images):
        # (N, 3, 32, 32) -> (N, 3072): this model ignores where pixels are.
        return self.out(F.relu(self.hidden_layer(images.flatten(1))))


def train_one_epoch(model, loader, optimizer, scheduler, autocast):
    """One pass over the training set: its mean loss, as trained."""
    model.train()
    total_loss = 0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for images, labels in tqdm(loader, disable=None):
        # Random horizontal flips: a mirrored cat is still a cat, and the net sees "new" images.
        flip = torch.rand(len(images), device=images.device) < 0.5
        images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
        with autocast:
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
        # The three steps of every training loop: forget the last gradients, compute new
        # ones by backpropagation, and move every weight a little against its gradient.
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.detach() * len(labels)
    return dict(train_loss=float(total_loss) / len(loader.dataset))


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
    # The same seed, the same weights, flips and batch order: the same result on the same CPU (GPU
    # runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args, fp16=False)
    # bf16 runs the matrix maths in 16 bits where the hardware has it (conv_net_cifar.py explains).
    autocast = torch.autocast(args.device.type, torch.bfloat16, enabled=args.precision == "bf16")

    train_set, test_set = (load_split(args.data_dir, train, args.device) for train in (True, False))
    if args.dry_run:
        # One epoch of 16 random images (seeded): several classes, whatever the files' order.
        pick, args.epochs = torch.randperm(len(test_set))[:16], 1
        train_set, test_set = TensorDataset(*train_set[pick]), TensorDataset(*test_set[pick])
    # Instead of fc_mnist.py's DataLoader(train_set, batch_size, shuffle=True), for data that
    # fits on the device (CIFAR-10's images take 737 MB as floats, 614 MB of them for training):
    # load_split() put the whole dataset there once, so the loop copies no batch from the CPU.
    # And the DataLoader is handed whole batches of random indices (a BatchSampler over a
    # RandomSampler; batch_size=None: they are batches already), so each batch is sliced out in
    # one indexing operation instead of 256 images fetched one by one and stacked. On a CPU the
    # gain is small (benchmarks/README.md); on a GPU it saves copying every batch.
    shuffled = BatchSampler(RandomSampler(train_set), args.batch_size, drop_last=False)
    train_loader = DataLoader(train_set, sampler=shuffled, batch_size=None)

    model = FeedForwardNet().to(args.device)
    # Momentum: each step also moves along the steps before it (faster along steady slopes);
    # weight decay pulls weights towards 0. The momentum 0.9 is a placeholder: OneCycleLR
    # below sets it, from 0.95 down to 0.85 while the rate rises, and back up as it falls.
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=5e-4)
    # One-cycle: warm up, then anneal to ~0: a given accuracy in fewer epochs than a fixed rate.
    steps = args.epochs * len(train_loader)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps)

    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_figures = train_one_epoch(model, train_loader, optimizer, scheduler, autocast)
        seconds = time.perf_counter() - start
        test_figures = evaluate(model, DataLoader(test_set, batch_size=1000), autocast, "test")
        log_epoch(history, epoch=epoch, **train_figures, **test_figures, seconds=seconds)

    write_metrics(args, history, **test_figures)
    save_plots(history, args.out_dir)
    # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    torch.save(dict(weights=weights, classes=CLASSES), args.out_dir / "model.pt")


# ---- plumbing: flags, data, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=8, help="passes over the training set (default 8)")
    add("--batch-size", type=positive(int), default=256, help="images per step (default 256)")
    add("--lr", type=positive(float), default=0.05, help="peak learning rate (default 0.05)")
    return parse_with_common_flags(p, argv, data="cifar-10-batches-py/", fp16=False)


def download(data_dir):
    """CIFAR-10 into data_dir/cifar-10-batches-py/ on first use; torchvision checks its MD5s.
    No network, a broken connection or a corrupt file ends in one line saying what to do."""
    try:
        CIFAR10(data_dir, download=not (data_dir / CIFAR10.base_folder).exists())
        CIFAR10(data_dir, train=False)
    except (OSError, RuntimeError, EOFError) as err:
        sys.exit(f"error: could not get CIFAR-10 ({err!r}): unpack {CIFAR10.url} in {data_dir}/")


def load_split(data_dir, train, device):
    """One split as a TensorDataset on `device`: normalised (N, CHANNELS, SIZE, SIZE) images,
    decoded once, here, not image by image in every epoch, and their labels."""
    download(data_dir)
    dataset = CIFAR10(data_dir, train=train)
    # The files hold (N, height, width, channel) bytes; PyTorch wants (N, channel, height, width).
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).float().div(255)
    images = (images - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)
    return TensorDataset(images.to(device), torch.tensor(dataset.targets).to(device))


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (train: augmented, during the epoch)")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy")
    ax_loss.legend()
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
