"""MNIST as regression: why classification needs a classification loss.

Model:  a single neuron, Linear(784, 1), or with --hidden 10 a small net
        Linear(784, 10) -> ReLU -> Linear(10, 1). It outputs one number, trained with
        mean squared error (MSE) to equal the digit's value (SGD, lr 0.01, momentum 0.9).
        A prediction counts as correct when the output, rounded, equals the label.
Data:   MNIST (28x28 images of handwritten digits), downloaded by torchvision into the
        top-level data/ folder on first use.
Expect: accuracy stalls: about 25% for one neuron and about 30% with --hidden 10,
        jumping a few points from epoch to epoch however long you train (README has measured figures).

Why it stalls: regression treats labels as points on a line, so it assumes a "7" is
closer to an "8" than to a "1" and that a 4-or-9 lookalike should be predicted 6.5.
Digit classes have no such order. A classifier gives every class its own output and
learns a probability for each with cross-entropy (see fc_mnist.py): the same data
then reaches over 95%.

Run:
    python mnist/fc_regression.py             # train with the defaults
    python mnist/fc_regression.py --dry-run   # one tiny batch: checks the set-up in seconds
    python mnist/fc_regression.py --hidden 10 # ten hidden units instead of one neuron
    python mnist/fc_regression.py --help      # every setting

Writes metrics.json and curves.png into --out-dir.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; works without a display (servers, CI)
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.datasets import MNIST
from torchvision.datasets.utils import check_integrity
from tqdm import tqdm

TOP = Path(__file__).resolve().parents[1]  # the repository's top level: this script lives in mnist/


def fail(message):
    """Stop with a one-line error instead of a traceback."""
    sys.exit(f"error: {message}")


def positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=positive(int), default=20, help="passes over the training set (default 20)")
    p.add_argument("--batch-size", type=positive(int), default=64, help="images per training step (default 64)")
    p.add_argument("--lr", type=positive(float), default=0.01, help="SGD learning rate, momentum 0.9 (default 0.01)")
    p.add_argument("--hidden", type=int, default=0,
                   help="hidden ReLU units; 0 (the default) is a single neuron, 784 -> 1")
    p.add_argument("--seed", type=int, default=0, help="random seed, for repeatable runs (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="where to train; auto picks CUDA, then Apple MPS, then the CPU")
    p.add_argument("--data-dir", type=Path, default=TOP / "data",
                   help="folder holding (or receiving) MNIST/raw/ (default: the top-level data/)")
    p.add_argument("--out-dir", type=Path, default=TOP / "runs" / Path(__file__).stem,
                   help="where metrics.json and curves.png go (default: runs/<script name>/)")
    p.add_argument("--dry-run", action="store_true", help="train and evaluate on one tiny batch, then exit")
    args = p.parse_args(argv)
    if args.hidden < 0:
        p.error(f"argument --hidden: must be 0 or more, got {args.hidden}")
    return args


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        fail("--device mps was asked for, but Apple MPS is not available")
    return torch.device(name)


def load_mnist(data_dir, device):
    """Return train and test (images, labels) as tensors on `device`, images normalised, shape (N, 1, 28, 28).

    MNIST is small (47 MB as bytes), so it is decoded and normalised once here and
    batches are sliced from memory, instead of converting image by image every epoch.
    """
    raw = data_dir / "MNIST" / "raw"
    for filename, md5 in MNIST.resources:
        if (raw / filename).exists() and not check_integrity(str(raw / filename), md5):
            fail(f"{raw / filename} failed its MD5 check (corrupt or partial download): delete it and run again")
    try:
        splits = [MNIST(str(data_dir), train=train, download=True) for train in (True, False)]
    except RuntimeError as err:  # torchvision tried every mirror, or could not parse a file
        names = ", ".join(name for name, _ in MNIST.resources)
        fail(f"could not get MNIST ({str(err).strip().splitlines()[0]}). Download {names} "
             f"from {MNIST.mirrors[0]} by hand and put them in {raw}/")
    # Pixels scaled to [0, 1] only: with MSE and SGD at lr 0.01, standardised inputs make the steps too big.
    return [((split.data.float() / 255).unsqueeze(1).to(device), split.targets.to(device)) for split in splits]


def make_model(hidden):
    if hidden == 0:
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 1))  # a single neuron
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def predict_digit(outputs):
    """Round the regression output to the nearest digit 0..9."""
    return outputs.squeeze(1).round().clamp(0, 9).long()


def batches(images, labels, batch_size, shuffle=False):
    order = torch.randperm(len(images), device=images.device) if shuffle else torch.arange(len(images))
    for start in range(0, len(images), batch_size):
        index = order[start:start + batch_size]
        yield images[index], labels[index]


def train_one_epoch(model, images, labels, optimizer, args):
    model.train()
    losses = []
    for x, y in tqdm(batches(images, labels, args.batch_size, shuffle=True), desc="train", leave=False,
                     total=-(-len(images) // args.batch_size), disable=args.dry_run):
        loss = F.mse_loss(model(x).squeeze(1), y.float())  # distance from the digit's value
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()  # no gradients needed: faster and lighter
def check_accuracy(model, images, labels, batch_size=2000):
    """Fraction of `images` the model classifies correctly."""
    model.eval()
    correct = sum((predict_digit(model(x)) == y).sum().item() for x, y in batches(images, labels, batch_size))
    return correct / len(images)


def save_curves(step_losses, history, out_dir):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(step_losses, linewidth=0.5)
    ax_loss.set(xlabel="training step", ylabel="mean squared error", yscale="log")
    for split in ("train", "test"):
        ax_acc.plot([h["epoch"] for h in history], [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    ax_acc.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    print(f"device: {device} ({torch.get_num_threads()} CPU threads)")

    args.data_dir.mkdir(parents=True, exist_ok=True)
    (train_images, train_labels), (test_images, test_labels) = load_mnist(args.data_dir, device)
    if args.dry_run:
        args.epochs, args.batch_size = 1, 16
        train_images, train_labels = train_images[:16], train_labels[:16]
        test_images, test_labels = test_images[:16], test_labels[:16]
    print(f"data: {len(train_images)} training and {len(test_images)} test images")

    model = make_model(args.hidden).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    history, step_losses = [], []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        losses = train_one_epoch(model, train_images, train_labels, optimizer, args)
        seconds = time.perf_counter() - start
        step_losses += losses
        train_acc = check_accuracy(model, train_images, train_labels)
        test_acc = check_accuracy(model, test_images, test_labels)
        history.append(dict(epoch=epoch, train_loss=sum(losses) / len(losses), train_accuracy=train_acc,
                            test_accuracy=test_acc, seconds=seconds))
        print(f"epoch {epoch:2d}  train loss {history[-1]['train_loss']:.3f}  train acc {train_acc:.4f}  "
              f"test acc {test_acc:.4f}  time {seconds:.1f}s")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = dict(script=Path(__file__).name, hidden=args.hidden, device=str(device), torch=torch.__version__,
                   threads=torch.get_num_threads(), epochs=args.epochs, eval_split="test",
                   test_accuracy=history[-1]["test_accuracy"], train_seconds=sum(h["seconds"] for h in history),
                   history=history)
    if device.type == "cuda":
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    (args.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_curves(step_losses, history, args.out_dir)
    print(f"test accuracy {metrics['test_accuracy']:.4f}; metrics and curves in {args.out_dir}")


if __name__ == "__main__":
    main()
