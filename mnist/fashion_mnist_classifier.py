"""A FashionMNIST classifier trained the careful way: validation split, best checkpoint, reload.

Model:  784 -> 256 -> 128 -> 64 -> 10, ReLU and dropout 0.2 after each hidden layer,
        log-softmax outputs with negative log-likelihood loss, Adam.
Data:   FashionMNIST (28x28 images of 10 kinds of clothing), downloaded by torchvision
        into the top-level data/ folder on first use. --val-size of the 60,000 training
        images are held out (a seeded random split) to pick the best epoch; the 10,000
        test images are used once, at the end, by the reloaded best checkpoint.
Expect: about 88% test accuracy after the default 10 epochs, a couple of seconds an
        epoch on a laptop CPU (README has measured figures).

Run:
    python mnist/fashion_mnist_classifier.py             # train with the defaults
    python mnist/fashion_mnist_classifier.py --dry-run   # one tiny batch: checks the set-up
    python mnist/fashion_mnist_classifier.py --help      # every setting
    python mnist/fashion_mnist_classifier.py --eval-only \\
        --checkpoint runs/fashion_mnist_classifier/best.pt

Training writes best.pt (the checkpoint), metrics.json, curves.png and prediction.png into
--out-dir; --eval-only writes evaluation.json and prediction.png and leaves metrics.json alone.
"""

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; works without a display (servers, CI)
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import check_integrity
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# Inside this repository all scripts share its top-level data/ and runs/ (the folder holding
# data/README.md); a copy of this script anywhere else keeps both in its own folder.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
MEAN, STD = 0.2860, 0.3530  # of the FashionMNIST training pixels, for normalisation
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


class Classifier(nn.Module):
    def __init__(self, hidden_sizes=(256, 128, 64), dropout=0.2):
        super().__init__()
        sizes = [28 * 28, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip(sizes, sizes[1:]))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(sizes[-1], 10)

    def forward(self, x):
        x = x.flatten(1)  # (N, 1, 28, 28) -> (N, 784)
        for layer in self.hidden:
            x = self.dropout(F.relu(layer(x)))
        return F.log_softmax(self.out(x), dim=1)  # log-probabilities, for F.nll_loss


def batches(images, labels, batch_size, generator=None):
    """Mini-batches sliced from tensors in memory; in a random order if given a seeded generator."""
    order = (
        torch.randperm(len(images), generator=generator) if generator else torch.arange(len(images))
    )
    order = order.to(images.device)
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]


def train_one_epoch(model, images, labels, optimizer, scaler, autocast, args, generator):
    """One pass over the training set: (mean loss, accuracy on the batches as they were trained)."""
    model.train()
    total_loss = correct = 0
    steps = math.ceil(len(images) / args.batch_size)
    # disable=None: no progress bar when the output is not a terminal (a log file, CI).
    for x, y in tqdm(
        batches(images, labels, args.batch_size, generator), total=steps, disable=None
    ):
        with autocast:
            log_probs = model(x)
            loss = F.nll_loss(log_probs, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 only: the loss is scaled up so small gradients survive
        scaler.step(optimizer)  # (unscales the gradients first, skips the step if any overflowed)
        scaler.update()
        total_loss += loss.item() * len(y)
        correct += (log_probs.argmax(1) == y).sum().item()
    return total_loss / len(images), correct / len(images)


@torch.no_grad()  # no gradients needed: faster and lighter
def evaluate(model, images, labels, autocast, batch_size=2000):
    """(mean loss, accuracy) of the model on `images`."""
    model.eval()
    total_loss = correct = 0
    for x, y in batches(images, labels, batch_size):
        with autocast:
            log_probs = model(x)
        total_loss += F.nll_loss(log_probs.float(), y, reduction="sum").item()
        correct += (log_probs.argmax(1) == y).sum().item()
    return total_loss / len(images), correct / len(images)


def split_train_validation(n_images, val_size, seed):
    """Indices of a random, repeatable training / validation split of n_images."""
    if not 0 < val_size < n_images:
        fail(f"--val-size must be between 1 and {n_images - 1} ({n_images} training images)")
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the initial weights and dropout
    generator = torch.Generator().manual_seed(args.seed)  # batch order
    device, device_why = pick_device(args.device)
    precision, precision_why = pick_precision(args.precision, device)
    print(f"device: {device} ({device_why}); precision: {precision} ({precision_why})")
    autocast = autocast_for(device, precision)
    checkpoint = args.checkpoint or args.out_dir / "best.pt"

    # The whole dataset, decoded and normalised once, as tensors on the device.
    (train_images, train_labels), (test_images, test_labels) = load_fashion_mnist(
        args.data_dir, device
    )
    if args.dry_run:
        train_images, train_labels = train_images[:24], train_labels[:24]
        test_images, test_labels = test_images[:16], test_labels[:16]
    if args.eval_only:  # the test set only, with a model trained before
        model = load_checkpoint(checkpoint, device)
        test_loss, test_acc = evaluate(model, test_images, test_labels, autocast)
        save_prediction(model, test_images[0], test_labels[0].item(), args.out_dir)
        results = dict(checkpoint=str(checkpoint), test_loss=test_loss, test_accuracy=test_acc)
        return write_metrics(args, device, precision, [], name="evaluation.json", **results)

    train_index, val_index = split_train_validation(len(train_images), args.val_size, args.seed)
    val_images, val_labels = train_images[val_index], train_labels[val_index]
    train_images, train_labels = train_images[train_index], train_labels[train_index]
    print(
        f"data: {len(train_images)} training, {len(val_images)} validation, {len(test_images)} test"
    )

    hyperparameters = dict(hidden_sizes=[256, 128, 64], dropout=0.2)
    model = Classifier(**hyperparameters).to(device)
    # Adam adapts each weight's step size to the size of its recent gradients: a good default
    # that needs little tuning of the learning rate.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # fp16 keeps too few exponent bits for small gradients: GradScaler scales the loss up before
    # backward and the gradients down before the step. With bf16 or fp32 it does nothing.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    history, best_val_loss = [], float("inf")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, train_images, train_labels, optimizer, scaler, autocast, args, generator
        )
        seconds = time.perf_counter() - start
        val_loss, val_acc = evaluate(model, val_images, val_labels, autocast)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc))
        history[-1].update(val_loss=val_loss, val_accuracy=val_acc, seconds=seconds)
        # Keep the weights of the epoch that did best on data it never trained on.
        saved = val_loss < best_val_loss
        if saved:
            best_val_loss = val_loss
            save_checkpoint(model, hyperparameters, checkpoint)
        print(epoch_line(history[-1]) + ("  (saved best)" if saved else ""))

    model = load_checkpoint(checkpoint, device)  # the best epoch, not the last
    test_loss, test_acc = evaluate(model, test_images, test_labels, autocast)
    print(
        f"test loss {test_loss:.4f}  test acc {test_acc:.4f}  (best checkpoint, test set used once)"
    )
    save_plots(history, args.out_dir)
    save_prediction(model, test_images[0], test_labels[0].item(), args.out_dir)
    write_metrics(args, device, precision, history, test_loss=test_loss, test_accuracy=test_acc)


# ------------------------------------------------------------------------------------------
# Plumbing: flags, errors, device and precision, download, checkpoints, plots. The lesson is above.
# ------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add(
        "--epochs", type=positive(int), default=10, help="passes over the training set (default 10)"
    )
    add("--batch-size", type=positive(int), default=128, help="images per step (default 128)")
    add("--lr", type=positive(float), default=1e-3, help="Adam learning rate (default 1e-3)")
    add(
        "--val-size",
        type=positive(int),
        default=6000,
        help="training images held out for validation (default 6000)",
    )
    add(
        "--checkpoint",
        type=Path,
        help="checkpoint to write (default: OUT_DIR/best.pt), or to read with --eval-only",
    )
    add(
        "--eval-only",
        action="store_true",
        help="load --checkpoint and measure it on the test set, without training",
    )
    add_common_flags(p, data="FashionMNIST/raw/")
    args = p.parse_args(argv)
    if args.eval_only and args.checkpoint is None:
        p.error("--eval-only needs --checkpoint PATH (a file written by an earlier training run)")
    if args.dry_run:  # one tiny batch through training and evaluation
        args.epochs, args.batch_size, args.val_size = 1, 16, 8
    return args


def load_fashion_mnist(data_dir, device):
    """Train and test (images, labels) as tensors on `device`, images normalised, (N, 1, 28, 28).

    FashionMNIST is small (47 MB as bytes), so it is decoded and normalised once here and
    batches are sliced from memory, instead of converting image by image every epoch.
    """
    raw = data_dir / "FashionMNIST" / "raw"
    for filename, md5 in FashionMNIST.resources:
        if (raw / filename).exists() and not check_integrity(str(raw / filename), md5):
            fail(f"{raw / filename} failed its MD5 check (corrupt or partial download): delete it")
    # No network, a broken connection, unpacked files failing their MD5 check:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        splits = [
            FashionMNIST(str(data_dir), train=train, download=True) for train in (True, False)
        ]
    except (OSError, RuntimeError) as err:
        names = ", ".join(name for name, _ in FashionMNIST.resources)
        fail(
            f"could not get FashionMNIST ({first_line(err)}). Download {names} "
            f"from {FashionMNIST.mirrors[0]} by hand and put them in {raw}/"
        )
    tensors = []
    for split in splits:
        images = ((split.data.float() / 255 - MEAN) / STD).unsqueeze(1).to(device)
        tensors.append((images, split.targets.to(device)))
    return tensors


def save_checkpoint(model, hyperparameters, path):
    # Only tensors and plain Python values: loadable with torch.load(weights_only=True), which
    # refuses to run code hidden in a file (unlike a pickled model object).
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "hyperparameters": hyperparameters}, path)


def load_checkpoint(path, device):
    """The model saved at `path`, or a one-line error saying what is wrong with the file."""
    if not path.is_file():
        fail(f"no checkpoint at {path}: train first (it is written to OUT_DIR/best.pt)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        model = Classifier(**checkpoint["hyperparameters"]).to(device)
        model.load_state_dict(checkpoint["model"])
    except Exception as err:  # empty, truncated, not a torch file, or another script's checkpoint
        fail(f"{path} is not a checkpoint of this script ({first_line(err)})")
    return model


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch, training and validation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="negative log-likelihood")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch, with dropout)")
    ax_loss.legend(), ax_acc.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


@torch.no_grad()
def save_prediction(model, image, label, out_dir):
    """prediction.png: one test image beside the model's probability for every class."""
    out_dir.mkdir(parents=True, exist_ok=True)
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


def add_common_flags(p, data):
    add = p.add_argument
    add("--seed", type=int, default=0, help="random seed (default 0): README says what it repeats")
    add(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        default="auto",
        help="where to train (default auto: CUDA, then Apple MPS, then the CPU)",
    )
    add(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="number format (default auto: bf16 where the hardware has it natively, fp16 with "
        "loss scaling on older CUDA GPUs, else fp32)",
    )
    add(
        "--data-dir",
        type=Path,
        default=TOP / "data",
        help=f"folder holding (or receiving) {data} (default: {TOP / 'data'})"
        if data
        else "unused: this script makes its data (kept so that every script takes the same flags)",
    )
    add(
        "--out-dir",
        type=Path,
        default=TOP / "runs" / Path(__file__).stem,
        help="where metrics.json and the plots go (default: runs/<script name>/)",
    )
    add("--dry-run", action="store_true", help="train and evaluate on one tiny batch, then exit")


def positive(kind):
    """An argparse type: a number of `kind` above zero."""

    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def fail(message):
    """Stop with a one-line error instead of a traceback."""
    sys.exit(f"error: {message}")


def first_line(err):
    """An exception as one short line (some, like EOFError, have no message at all)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def pick_device(requested):
    """(device, why): --device as asked; for 'auto', CUDA, then Apple MPS, then the CPU."""
    gpu_problem = unsupported_gpu() if torch.cuda.is_available() else None
    if requested in ("auto", "cuda") and torch.cuda.is_available() and not gpu_problem:
        return torch.device("cuda"), torch.cuda.get_device_name()
    if requested == "cuda":
        fail(gpu_problem or "--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if requested == "mps" and not torch.backends.mps.is_available():
        fail("--device mps was asked for, but Apple MPS is not available: use --device cpu")
    if requested == "mps" or (requested == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps"), "Apple GPU"
    why = f"{torch.get_num_threads()} threads" + (f"; {gpu_problem}" if gpu_problem else "")
    return torch.device("cpu"), why


def unsupported_gpu():
    """Why this PyTorch build cannot run on the GPU, or None if it can.

    A CUDA build carries kernels for some GPU generations only (the lock's CUDA 13 build: compute
    capability 7.5 and newer). On an older GPU torch.cuda.is_available() is still True, and the
    first kernel fails with "no kernel image is available".
    """
    capability = torch.cuda.get_device_capability()
    for arch in torch.cuda.get_arch_list():  # e.g. "sm_75", "sm_90a", "compute_120"
        kind, _, number = arch.partition("_")
        digits = "".join(c for c in number if c.isdigit())
        built = (int(digits[:-1]), int(digits[-1]))
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return None  # machine code for this generation
        if kind == "compute" and built <= capability:
            return None  # PTX, compiled for this GPU when first used
    major, minor = capability
    return (
        f"the GPU {torch.cuda.get_device_name()} (compute capability {major}.{minor}) is too old "
        f"for this PyTorch build (kernels for {' '.join(torch.cuda.get_arch_list())}): install "
        "a PyTorch build that supports it (pytorch.org), or use --device cpu"
    )


def pick_precision(requested, device):
    """(precision, why): bf16 where the hardware has native bfloat16, fp16 (with a GradScaler) on
    older CUDA GPUs, fp32 on MPS and on CPUs without bfloat16."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            best, why = "bf16", f"native bfloat16 on compute capability {major}.{minor}"
        else:
            best, why = "fp16", f"compute capability {major}.{minor}: no native bfloat16 before 8.0"
    elif device.type == "mps":
        best, why = "fp32", "the MPS default: mixed precision there is new and its speed varies"
    elif cpu_has_native_bf16():
        best, why = "bf16", "this CPU has native bfloat16"
    else:
        best, why = "fp32", "this CPU has no native bfloat16"
    if requested == "auto":
        return best, f"auto: {why}"
    if requested == "bf16" and device.type == "cuda" and best != "bf16":
        fail(f"--precision bf16: {why}; use --precision fp16 (or auto)")
    return requested, "as asked"


def cpu_has_native_bf16():
    """PyTorch has no public check, so this asks oneDNN through a private call, guarded: if that
    call ever changes or disappears, the answer is "no" (fp32), never a crash."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


def autocast_for(device, precision):
    """The context that runs matrix maths in bf16 or fp16 (weights and sums stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def epoch_line(entry):
    """One epoch's figures, printed the same way in every script."""
    line = f"epoch {entry['epoch']:2d}"
    for split in ("train", "val", "test"):
        if f"{split}_accuracy" in entry:
            loss, accuracy = entry[f"{split}_loss"], entry[f"{split}_accuracy"]
            line += f"  {split} loss {loss:.4f}  {split} acc {accuracy:.4f}"
    return line + f"  time {entry['seconds']:.1f}s"


def write_metrics(args, device, precision, history, name="metrics.json", **results):
    """metrics.json: which script ran where and how, its final figures (test_* are only ever
    test-set figures), and every epoch's; then print the headline figure."""
    split = "test" if "test_accuracy" in results else "val"
    metrics = dict(script=Path(__file__).name, device=str(device), precision=precision)
    metrics.update(torch=torch.__version__, threads=torch.get_num_threads(), seed=args.seed)
    if device.type == "cuda":
        metrics["gpu"] = torch.cuda.get_device_name()
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    metrics.update(eval_split=split, **results)
    if history:  # a training run (--eval-only trains nothing, so it records no epochs)
        metrics.update(epochs=len(history), train_seconds=sum(h["seconds"] for h in history))
        metrics["history"] = history
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / name).write_text(json.dumps(metrics, indent=2))
    print(f"{split} accuracy {results[f'{split}_accuracy']:.4f}; results in {args.out_dir}")


if __name__ == "__main__":
    main()
