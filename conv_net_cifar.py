"""A small convolutional network, trained on CIFAR-10.

Model:  three 3x3 convolutions (stride 1, padding 1, each followed by ReLU) that keep
        the pixel layout, then two fully connected layers:
        conv 3->8, conv 8->16, max-pool 2, conv 16->24, max-pool 2,
        Linear(24*8*8, 100) -> ReLU -> Linear(100, 10).
Data:   CIFAR-10, 50,000 training and 10,000 test images of 10 classes
        (plane, car, bird, cat, deer, dog, frog, horse, ship, truck),
        downloaded by torchvision into the top-level data/ folder on first use.
Expect: about 72% test accuracy after the default 5 epochs, a few seconds an
        epoch on a laptop CPU (README has measured figures). The tutorial this
        comes from reached 67%. Chance is 10%.

Run:
    python conv_net_cifar.py             # train with the defaults
    python conv_net_cifar.py --dry-run   # one tiny batch: checks the set-up in seconds
    python conv_net_cifar.py --help      # every setting

Prints the accuracy of every class, and writes metrics.json, curves.png,
predictions.png and confusion_matrix.png into --out-dir.
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
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# Inside this repository all scripts share its top-level data/ and runs/ (the folder holding
# data/README.md); a copy of this script anywhere else keeps both in its own folder.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel mean and std of the CIFAR-10 training images, for normalisation.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        # padding=1 keeps a 3x3 convolution's output the size of its input.
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 24, 3, padding=1)
        self.fc1 = nn.Linear(24 * 8 * 8, 100)  # two 2x2 poolings: 32x32 -> 16x16 -> 8x8
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))  # (N, 8, 32, 32)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 16, 16, 16)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # (N, 24, 8, 8)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def batches(images, labels, batch_size, generator=None):
    """Mini-batches sliced from tensors in memory; in a random order if given a seeded generator."""
    order = (
        torch.randperm(len(images), generator=generator) if generator else torch.arange(len(images))
    )
    order = order.to(images.device)
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]


def train_one_epoch(model, images, labels, optimizer, scheduler, scaler, autocast, args, generator):
    """One pass over the training set: (mean loss, accuracy on the batches as they were trained)."""
    model.train()
    total_loss = correct = 0
    steps = math.ceil(len(images) / args.batch_size)
    # disable=None: no progress bar when the output is not a terminal (a log file, CI).
    for x, y in tqdm(
        batches(images, labels, args.batch_size, generator), total=steps, disable=None
    ):
        # Random horizontal flips: a mirrored cat is still a cat, and the net sees "new" images.
        flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        with autocast:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 only: the loss is scaled up so small gradients survive
        scaler.step(optimizer)  # (unscales the gradients first, skips the step if any overflowed)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(images), correct / len(images)


@torch.no_grad()  # no gradients needed: faster and lighter
def evaluate(model, images, labels, autocast, batch_size=1000):
    """(mean loss, accuracy, the predicted class of every image)."""
    model.eval()
    total_loss, predictions = 0.0, []
    for x, y in batches(images, labels, batch_size):
        with autocast:
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        predictions.append(logits.argmax(1))
    predictions = torch.cat(predictions)
    return total_loss / len(images), (predictions == labels).float().mean().item(), predictions


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the initial weights
    generator = torch.Generator().manual_seed(args.seed)  # batch order and flips
    device, device_why = pick_device(args.device)
    precision, precision_why = pick_precision(args.precision, device)
    print(f"device: {device} ({device_why}); precision: {precision} ({precision_why})")
    autocast = autocast_for(device, precision)

    # The whole dataset, decoded and normalised once, as tensors on the device.
    (train_images, train_labels), (test_images, test_labels) = load_cifar10(args.data_dir, device)
    if args.dry_run:
        train_images, train_labels = train_images[:16], train_labels[:16]
        test_images, test_labels = test_images[:16], test_labels[:16]
    print(f"data: {len(train_images)} training and {len(test_images)} test images")

    model = ConvNet().to(device)
    # SGD with momentum 0.9 (each step keeps 90% of the previous step's direction: faster
    # along steady slopes), Nesterov (the gradient is taken where momentum is about to carry
    # the weights: steadier), weight decay 5e-4 (pulls every weight towards 0: less overfitting).
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    # One-cycle: warm up, then anneal to ~0: a given accuracy in fewer epochs than a fixed rate.
    total_steps = args.epochs * math.ceil(len(train_images) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps)
    # fp16 keeps too few exponent bits for small gradients: GradScaler scales the loss up before
    # backward and the gradients down before the step. With bf16 or fp32 it does nothing.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model,
            train_images,
            train_labels,
            optimizer,
            scheduler,
            scaler,
            autocast,
            args,
            generator,
        )
        seconds = time.perf_counter() - start
        test_loss, test_acc, predictions = evaluate(model, test_images, test_labels, autocast)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc))
        history[-1].update(test_loss=test_loss, test_accuracy=test_acc, seconds=seconds)
        print(epoch_line(history[-1]))

    save_plots(history, test_images[:16], test_labels[:16], predictions[:16], args.out_dir)
    per_class = report_classes(confusion_matrix(test_labels, predictions), args.out_dir)
    results = dict(test_loss=test_loss, test_accuracy=test_acc, per_class_accuracy=per_class)
    write_metrics(args, device, precision, history, **results)


# ------------------------------------------------------------------------------------------
# Plumbing: flags, errors, device and precision, download, plots. The lesson is above.
# ------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=5, help="passes over the training set (default 5)")
    add("--batch-size", type=positive(int), default=256, help="images per step (default 256)")
    add("--lr", type=positive(float), default=0.05, help="peak learning rate (default 0.05)")
    add_common_flags(p, data="cifar-10-batches-py/")
    args = p.parse_args(argv)
    if args.dry_run:  # one tiny batch through training and evaluation
        args.epochs, args.batch_size = 1, 16
    return args


def load_cifar10(data_dir, device):
    """Train and test (images, labels) as tensors on `device`, images normalised, (N, 3, 32, 32).

    The whole dataset fits in memory (50,000 x 3 x 32 x 32), so it is decoded and normalised
    once here, rather than image by image every epoch by a DataLoader.
    """
    archive = data_dir / CIFAR10.filename
    if archive.exists() and not check_integrity(str(archive), CIFAR10.tgz_md5):
        fail(f"{archive} failed its MD5 check (corrupt or partial download): delete it, run again")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download = not (data_dir / CIFAR10.base_folder).exists()
        splits = [CIFAR10(str(data_dir), train=train, download=download) for train in (True, False)]
    # No network, a broken connection, unpacked files failing their MD5 check:
    except (OSError, RuntimeError) as err:
        fail(
            f"could not get CIFAR-10 ({first_line(err)}). Download {CIFAR10.url} by hand "
            f"and put it in {data_dir}/ (or unpack it there as {CIFAR10.base_folder}/)"
        )
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    tensors = []
    for split in splits:
        images = torch.from_numpy(split.data).to(device).permute(0, 3, 1, 2)  # NHWC -> NCHW
        images = (images.float().div(255) - mean) / std
        # channels_last (NHWC in memory) is the layout the fast CPU and CUDA convolutions prefer;
        # several MPS kernels do not support it.
        if device.type != "mps":
            images = images.contiguous(memory_format=torch.channels_last)
        tensors.append((images, torch.tensor(split.targets, device=device)))
    return tensors


def save_plots(history, images, labels, predictions, out_dir):
    """curves.png (loss and accuracy per epoch) and predictions.png (images, guesses, truths)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: augmented, during the epoch)")
    ax_loss.legend(), ax_acc.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")

    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    fig, axes = plt.subplots(2, 8, figsize=(14, 4.2), squeeze=False)
    examples = zip(axes.flat, images.cpu().float(), labels.tolist(), predictions.tolist())
    for ax, image, label, guess in examples:
        image = (image * std + mean).clamp(0, 1)  # undo the normalisation
        ax.imshow(image.permute(1, 2, 0).numpy())
        colour = "green" if guess == label else "red"
        ax.set_title(f"{CLASSES[guess]}\n(true: {CLASSES[label]})", fontsize=9, color=colour)
    for ax in axes.flat:
        ax.axis("off")
    fig.savefig(out_dir / "predictions.png", dpi=100, bbox_inches="tight")
    plt.close("all")


def confusion_matrix(labels, predictions):
    """counts[true class, predicted class], over every test image whatever the batch size."""
    return torch.bincount(labels * 10 + predictions, minlength=100).view(10, 10).cpu()


def report_classes(counts, out_dir):
    """Print each class's accuracy, draw confusion_matrix.png; return {class: accuracy}."""
    per_class = counts.diag() / counts.sum(1).clamp(min=1)
    for name, accuracy, total in zip(CLASSES, per_class.tolist(), counts.sum(1).tolist()):
        print(f"  accuracy of {name:5s}: {accuracy:6.1%}  ({total} test images)")
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(counts.numpy(), cmap="Blues")
    for (row, col), value in zip(((r, c) for r in range(10) for c in range(10)), counts.flatten()):
        colour = "white" if value > counts.max() / 2 else "black"
        ax.text(col, row, value.item(), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(10), CLASSES, rotation=45)
    ax.set_yticks(range(10), CLASSES)
    ax.set(xlabel="predicted", ylabel="true", title="CIFAR-10 test confusion matrix")
    fig.colorbar(im)
    fig.savefig(out_dir / "confusion_matrix.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return dict(zip(CLASSES, per_class.tolist()))


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
