"""A FashionMNIST classifier trained the careful way: validation split, best checkpoint, reload.

Model:  784 -> 256 -> 128 -> 64 -> 10, ReLU and dropout 0.2 after each hidden layer,
        log-softmax outputs with negative log-likelihood loss, Adam.
Data:   FashionMNIST (28x28 images of 10 kinds of clothing), downloaded by torchvision
        into the top-level data/ folder on first use. --val-size of the 60,000 training
        images are held out (a seeded random split) to pick the best epoch; the 10,000
        test images are used once, at the end, by the reloaded best checkpoint.
Expect: about 0.88 test accuracy after the default 10 epochs, under 2 s an epoch on a
        2-core CPU with native bf16, 2.5 s in fp32 (benchmarks/README.md).

Run:
    python mnist/fashion_mnist_classifier.py             # train with the defaults
    python mnist/fashion_mnist_classifier.py --dry-run   # a tiny run: checks the set-up
    python mnist/fashion_mnist_classifier.py --eval-only   # measure the saved model again

Training writes model.pt (the best epoch's checkpoint), metrics.json, curves.png and
prediction.png into --out-dir; --eval-only writes evaluation.json and prediction.png.
To use the trained model:
    checkpoint = torch.load("runs/fashion_mnist_classifier/model.pt", weights_only=True)
    model = Classifier(**checkpoint["config"])
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


class Classifier(nn.Module):
    def __init__(self, hidden_sizes=(256, 128, 64), dropout=0.2):
        super().__init__()
        sizes = [CHANNELS * SIZE * SIZE, *hidden_sizes]
        self.hidden_layers = nn.ModuleList(
            nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:])
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(sizes[-1], len(CLASSES))

    def forward(self, images):
        x = images.flatten(1)
        for layer in self.hidden_layers:
            x = self.dropout(F.relu(layer(x)))
        # Log-probabilities, for F.nll_loss.
        return F.log_softmax(self.out(x), dim=1)


def train_one_epoch(model, loader, optimizer, amp):
    """One pass over the training set: its accuracy and mean loss, as trained."""
    model.train()
    autocast, scaler = amp
    total_loss = correct = 0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for images, labels in tqdm(loader, disable=None):
        with autocast:
            log_probs = model(images)
            loss = F.nll_loss(log_probs, labels)
        optimizer.zero_grad()
        # The GradScaler does nothing unless the precision is fp16 (conv_net_cifar.py explains).
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
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
    # The same seed, the same split, initial weights, dropout and batch order: the same result on
    # the same CPU (GPU runs differ slightly from run to run: some GPU kernels add in a varying
    # order).
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
        # One epoch of a few random examples (seeded): several classes, whatever the files' order.
        pick, args.epochs, args.val_size = torch.randperm(len(test_set))[:24], 1, 8
        train_set, test_set = TensorDataset(*train_set[pick]), TensorDataset(*test_set[pick[:16]])
    model_path = args.checkpoint or args.out_dir / "model.pt"
    if args.eval_only:
        return evaluate_checkpoint(args, model_path, test_set, autocast)
    # Hold out a random (seeded) part of the training images to choose the best epoch with.
    order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))
    val_set = TensorDataset(*train_set[order[: args.val_size]])
    train_set = TensorDataset(*train_set[order[args.val_size :]])
    print(f"data: {len(train_set)} training, {len(val_set)} validation, {len(test_set)} test")
    # Whole batches of indices: the DataLoader slices each batch out of the tensors at once.
    shuffled = BatchSampler(RandomSampler(train_set), args.batch_size, drop_last=False)
    train_loader = DataLoader(train_set, sampler=shuffled, batch_size=None)
    val_loader = DataLoader(val_set, batch_size=1000)

    config = dict(hidden_sizes=[256, 128, 64], dropout=0.2)
    model = Classifier(**config).to(args.device)
    # Adam adapts each weight's step size to its recent gradients: little tuning needed.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    history, best_val_loss = [], float("inf")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_figures = train_one_epoch(model, train_loader, optimizer, (autocast, scaler))
        seconds = time.perf_counter() - start
        val_figures = evaluate(model, val_loader, autocast, "val")
        log_epoch(history, epoch=epoch, **train_figures, **val_figures, seconds=seconds)
        # Keep the weights of the epoch that did best on data it never trained on.
        if val_figures["val_loss"] < best_val_loss:
            best_val_loss = val_figures["val_loss"]
            save_checkpoint(model, config, model_path)
            print(f"saved epoch {epoch} to {model_path}: its validation loss is the lowest yet")

    # The best epoch, not the last, measured once on the test set.
    model = load_checkpoint(model_path, args.device)
    test_figures = evaluate(model, DataLoader(test_set, batch_size=1000), autocast, "test")
    write_metrics(args, history, **test_figures)
    save_plots(history, args.out_dir)
    save_prediction(model, test_set, args.out_dir)


# ---- plumbing: flags, data, checkpoints, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add(
        "--epochs", type=positive(int), default=10, help="passes over the training set (default 10)"
    )
    add("--batch-size", type=positive(int), default=128, help="images per step (default 128)")
    add("--lr", type=positive(float), default=1e-3, help="Adam learning rate (default 1e-3)")
    add("--val-size", type=positive(int), default=6000, help="images held out (default 6000)")
    add("--checkpoint", type=Path, help="the saved model (default OUT_DIR/model.pt)")
    add(
        "--eval-only", action="store_true", help="measure --checkpoint on the test set; no training"
    )
    args = parse_with_common_flags(p, argv, data="FashionMNIST/raw/")
    # A dry run trains into OUT_DIR/dry-run/, never over a trained model.
    if args.dry_run and not args.eval_only:
        args.checkpoint = None
    if args.eval_only and any(
        getattr(args, f) != p.get_default(f) for f in ("epochs", "lr", "batch_size", "val_size")
    ):
        p.error("--eval-only trains nothing: drop --epochs, --lr, --batch-size and --val-size")
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


def save_checkpoint(model, config, path):
    # Only tensors and plain Python values: loadable with torch.load(weights_only=True), which
    # refuses to run code hidden in a file (unlike a pickled model object). CPU tensors: the
    # file loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(weights=weights, config=config, classes=CLASSES), path)


def load_checkpoint(path, device):
    """The model saved at `path`, or a one-line error saying what is wrong with the file."""
    if not path.is_file():
        sys.exit(f"error: no checkpoint at {path}: train first (it writes --checkpoint)")
    # Empty, truncated, not a torch file, or another script's checkpoint: one line.
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        model = Classifier(**checkpoint["config"]).to(device)
        model.load_state_dict(checkpoint["weights"])
    except Exception as err:
        sys.exit(f"error: {path} is not a checkpoint of this script ({err!r})")
    return model


def evaluate_checkpoint(args, model_path, test_set, autocast):
    """--eval-only: a saved model's test figures, in evaluation.json (metrics.json is left as
    the training run wrote it)."""
    model = load_checkpoint(model_path, args.device)
    test_figures = evaluate(model, DataLoader(test_set, batch_size=1000), autocast, "test")
    accuracy, loss = test_figures["test_accuracy"], test_figures["test_loss"]
    print(f"test accuracy {accuracy:.4f}  test loss {loss:.4f}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    evaluation = dict(checkpoint=str(model_path), **test_figures)
    (args.out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    save_prediction(model, test_set, args.out_dir)


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch, training and validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="negative log-likelihood")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch, with dropout)")
    ax_loss.legend()
    ax_acc.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def save_prediction(model, test_set, out_dir):
    """prediction.png: a random test image beside the model's probability for every class."""
    image, label = test_set[torch.randint(len(test_set), ()).item()]
    probabilities = model.eval()(image.unsqueeze(0)).exp().squeeze(0).float().cpu()
    fig, (ax_image, ax_bars) = plt.subplots(1, 2, figsize=(9, 3.5), width_ratios=[1, 2])
    ax_image.imshow((image.squeeze(0).cpu() * STD + MEAN).numpy(), cmap="gray")
    ax_image.set_title(f"true: {CLASSES[label]}")
    ax_image.axis("off")
    ax_bars.barh(CLASSES, probabilities.numpy())
    ax_bars.invert_yaxis()
    ax_bars.set(xlim=(0, 1), xlabel="probability", title="what the model thinks")
    fig.savefig(out_dir / "prediction.png", dpi=100, bbox_inches="tight")
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
