"""A small fully connected network that classifies MNIST digits.

Model:  each 28x28 image is flattened to 784 numbers -> Linear(784, 50) -> ReLU -> Linear(50, 10),
        trained with cross-entropy and Adam (lr 1e-3, batches of 64).
Data:   MNIST, 60,000 training and 10,000 test images of handwritten digits,
        downloaded by torchvision into the top-level data/ folder on first use.
Expect: about 95% test accuracy after the default single epoch, which takes
        about a second on a laptop CPU (README has measured figures).

Run:
    python mnist/fc_mnist.py             # train with the defaults
    python mnist/fc_mnist.py --dry-run   # one tiny batch: checks the set-up in seconds
    python mnist/fc_mnist.py --help      # every setting

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
MEAN, STD = 0.1307, 0.3081  # of the MNIST training pixels, for normalisation


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
    p.add_argument("--epochs", type=positive(int), default=1, help="passes over the training set (default 1)")
    p.add_argument("--batch-size", type=positive(int), default=64, help="images per training step (default 64)")
    p.add_argument("--lr", type=positive(float), default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed, for repeatable runs (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="where to train; auto picks CUDA, then Apple MPS, then the CPU")
    p.add_argument("--data-dir", type=Path, default=TOP / "data",
                   help="folder holding (or receiving) MNIST/raw/ (default: the top-level data/)")
    p.add_argument("--out-dir", type=Path, default=TOP / "runs" / Path(__file__).stem,
                   help="where metrics.json and curves.png go (default: runs/<script name>/)")
    p.add_argument("--dry-run", action="store_true", help="train and evaluate on one tiny batch, then exit")
    return p.parse_args(argv)


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
    return [(((split.data.float() / 255 - MEAN) / STD).unsqueeze(1).to(device), split.targets.to(device))
            for split in splits]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(28 * 28, 50)
        self.out = nn.Linear(50, 10)

    def forward(self, x):
        return self.out(F.relu(self.hidden(x.flatten(1))))  # (N, 1, 28, 28) -> (N, 784) -> (N, 10)


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
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()  # no gradients needed: faster and lighter
def check_accuracy(model, images, labels, batch_size=2000):
    """Fraction of `images` the model classifies correctly."""
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in batches(images, labels, batch_size))
    return correct / len(images)


def save_curves(step_losses, history, out_dir):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(step_losses, linewidth=0.5)
    ax_loss.set(xlabel="training step", ylabel="cross-entropy loss", yscale="log")
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

    model = Net().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
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
    metrics = dict(script=Path(__file__).name, device=str(device), torch=torch.__version__,
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
