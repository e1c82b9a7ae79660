"""A configurable feedforward network that classifies FashionMNIST clothes.

Model:  784 inputs -> --num-hidden layers of --hidden-dim units (ReLU, dropout) -> 10 outputs,
        held in an nn.ModuleList so the depth is a setting; log-softmax + negative
        log-likelihood loss (together: cross-entropy), SGD with momentum 0.9.
        Optional regularisation: --weight-decay (L2, done by the optimiser) and --l1
        (added to the loss by hand, which shows how any penalty can be added).
Data:   FashionMNIST, 60,000 training and 10,000 test 28x28 images of 10 kinds of clothing,
        downloaded by torchvision into the top-level data/ folder on first use.
        Test loss and accuracy are also measured every --eval-every training steps.
Expect: about 89% test accuracy after the default 7 epochs, two or three seconds
        an epoch on a laptop CPU (README has measured figures).

Run:
    python mnist/fashion_mnist_ffnn.py             # train with the defaults
    python mnist/fashion_mnist_ffnn.py --dry-run   # one tiny batch: checks the set-up in seconds
    python mnist/fashion_mnist_ffnn.py --help      # every setting

Writes metrics.json and curves.png into --out-dir.
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


class FeedForwardNet(nn.Module):
    def __init__(self, num_hidden=2, hidden_dim=512, dropout=0.2):
        super().__init__()
        sizes = [28 * 28] + [hidden_dim] * num_hidden
        # A plain Python list would hide the layers from .parameters() and .to(device):
        # nn.ModuleList registers them.
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


def train_one_epoch(
    model,
    train_data,
    test_data,
    optimizer,
    scheduler,
    scaler,
    autocast,
    args,
    generator,
    first_step,
):
    """One pass over the training set: (mean loss, accuracy on the batches as they were trained,
    the test evaluations made every --eval-every steps, each with the time it took)."""
    model.train()
    total_loss = correct = 0
    evaluations = []
    steps = math.ceil(len(train_data[0]) / args.batch_size)
    # disable=None: no progress bar when the output is not a terminal (a log file, CI).
    progress = tqdm(batches(*train_data, args.batch_size, generator), total=steps, disable=None)
    for step, (x, y) in enumerate(progress, start=first_step + 1):
        with autocast:
            log_probs = model(x)
            loss = F.nll_loss(log_probs, y)
        if args.l1:  # a penalty is just another term of the loss
            weights = (p for name, p in model.named_parameters() if "weight" in name)
            loss = loss + args.l1 * sum(w.abs().sum() for w in weights)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 only: the loss is scaled up so small gradients survive
        scaler.step(optimizer)  # (unscales the gradients first, skips the step if any overflowed)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += (log_probs.argmax(1) == y).sum().item()
        if step % args.eval_every == 0:
            start = time.perf_counter()
            test_loss, test_acc = evaluate(model, *test_data, autocast)
            seconds = time.perf_counter() - start
            evaluations.append(dict(step=step, test_loss=test_loss, test_accuracy=test_acc))
            evaluations[-1]["seconds"] = seconds
            progress.set_postfix(test_acc=f"{test_acc:.3f}")
            model.train()  # evaluate() switched dropout off
    return total_loss / len(train_data[0]), correct / len(train_data[0]), evaluations


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


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the initial weights and dropout
    generator = torch.Generator().manual_seed(args.seed)  # batch order
    device, device_why = pick_device(args.device)
    precision, precision_why = pick_precision(args.precision, device)
    print(f"device: {device} ({device_why}); precision: {precision} ({precision_why})")
    autocast = autocast_for(device, precision)

    # The whole dataset, decoded and normalised once, as tensors on the device.
    train_data, test_data = load_fashion_mnist(args.data_dir, device)
    if args.dry_run:
        train_data, test_data = [
            (images[:16], labels[:16]) for images, labels in (train_data, test_data)
        ]
    print(f"data: {len(train_data[0])} training and {len(test_data[0])} test images")

    model = FeedForwardNet(args.num_hidden, args.hidden_dim, args.dropout).to(device)
    # SGD with momentum 0.9 (each step keeps 90% of the previous step's direction: faster along
    # steady slopes); --weight-decay pulls every weight towards 0 each step (L2 regularisation).
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay
    )
    # Decay the rate smoothly to 0: lr 0.1 with momentum 0.9 learns fast early but keeps jumping
    # around the minimum if held; annealing it settles the weights (about +5 points of test
    # accuracy here).
    steps_per_epoch = math.ceil(len(train_data[0]) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * steps_per_epoch)
    # fp16 keeps too few exponent bits for small gradients: GradScaler scales the loss up before
    # backward and the gradients down before the step. With bf16 or fp32 it does nothing.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    history, evaluations = [], []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc, epoch_evaluations = train_one_epoch(
            model,
            train_data,
            test_data,
            optimizer,
            scheduler,
            scaler,
            autocast,
            args,
            generator,
            first_step=(epoch - 1) * steps_per_epoch,
        )
        # The test evaluations during the epoch are not training: their time is taken out.
        seconds = time.perf_counter() - start - sum(e["seconds"] for e in epoch_evaluations)
        evaluations += epoch_evaluations
        test_loss, test_acc = evaluate(model, *test_data, autocast)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc))
        history[-1].update(test_loss=test_loss, test_accuracy=test_acc, seconds=seconds)
        print(epoch_line(history[-1]))
    last_step = args.epochs * steps_per_epoch
    if not evaluations or evaluations[-1]["step"] != last_step:
        evaluations.append(dict(step=last_step, test_loss=test_loss, test_accuracy=test_acc))

    save_plots(history, evaluations, args.out_dir)
    results = dict(test_loss=test_loss, test_accuracy=test_acc, evaluations=evaluations)
    write_metrics(args, device, precision, history, **results)


# ------------------------------------------------------------------------------------------
# Plumbing: flags, errors, device and precision, download, plots. The lesson is above.
# ------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=7, help="passes over the training set (default 7)")
    add("--batch-size", type=positive(int), default=128, help="images per step (default 128)")
    add(
        "--lr",
        type=positive(float),
        default=0.1,
        help="SGD learning rate (momentum 0.9), annealed to 0 by a cosine schedule (default 0.1)",
    )
    add("--num-hidden", type=positive(int), default=2, help="number of hidden layers (default 2)")
    add(
        "--hidden-dim",
        type=positive(int),
        default=512,
        help="units in each hidden layer (default 512)",
    )
    add("--dropout", type=float, default=0.2, help="dropout after each hidden layer (default 0.2)")
    add(
        "--eval-every",
        type=positive(int),
        default=500,
        help="measure test loss and accuracy every this many training steps (default 500)",
    )
    add(
        "--l1",
        type=float,
        default=0.0,
        help="L1 penalty on the weights, added to the loss (default 0)",
    )
    add(
        "--weight-decay",
        type=float,
        default=0.0,
        help="L2 weight decay of the optimiser (default 0)",
    )
    add_common_flags(p, data="FashionMNIST/raw/")
    args = p.parse_args(argv)
    if not 0 <= args.dropout < 1:
        p.error(f"argument --dropout: must be in [0, 1), got {args.dropout}")
    if args.l1 < 0 or args.weight_decay < 0:
        p.error("argument --l1/--weight-decay: must not be negative")
    if args.dry_run:  # one tiny batch through training and evaluation
        args.epochs, args.batch_size, args.eval_every = 1, 16, 1
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


def save_plots(history, evaluations, out_dir):
    """curves.png: test loss and accuracy every --eval-every steps, train loss per epoch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [e["step"] for e in evaluations]
    steps_per_epoch = evaluations[-1]["step"] / len(history)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epoch_ends = [h["epoch"] * steps_per_epoch for h in history]
    ax_loss.plot(
        epoch_ends, [h["train_loss"] for h in history], marker="s", label="train (epoch mean)"
    )
    ax_loss.plot(steps, [e["test_loss"] for e in evaluations], marker="o", label="test")
    ax_loss.set(xlabel="training step", ylabel="negative log-likelihood", yscale="log")
    ax_acc.plot(steps, [e["test_accuracy"] for e in evaluations], marker="o", label="test")
    ax_acc.set(xlabel="training step", ylabel="accuracy")
    ax_loss.legend(), ax_acc.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
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
