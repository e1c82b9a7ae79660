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
    python mnist/fashion_mnist_classifier.py --dry-run   # one tiny batch: checks the set-up in seconds
    python mnist/fashion_mnist_classifier.py --help      # every setting

    python mnist/fashion_mnist_classifier.py --eval-only --checkpoint runs/fashion_mnist_classifier/best.pt

Writes best.pt (the checkpoint), metrics.json, curves.png and prediction.png into --out-dir.
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
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import check_integrity
from tqdm import tqdm

TOP = Path(__file__).resolve().parents[1]  # the repository's top level: this script lives in mnist/
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
    p.add_argument(
        "--epochs", type=positive(int), default=10, help="passes over the training set (default 10)"
    )
    p.add_argument(
        "--batch-size",
        type=positive(int),
        default=128,
        help="images per training step (default 128)",
    )
    p.add_argument(
        "--lr", type=positive(float), default=1e-3, help="Adam learning rate (default 1e-3)"
    )
    p.add_argument(
        "--val-size",
        type=positive(int),
        default=6000,
        help="training images held out for validation (default 6000)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="random seed, for repeatable runs (default 0)"
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        default="auto",
        help="where to train; auto picks CUDA, then Apple MPS, then the CPU",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=TOP / "data",
        help="folder holding (or receiving) MNIST/raw/ (default: the top-level data/)",
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=TOP / "runs" / Path(__file__).stem,
        help="where metrics.json and curves.png go (default: runs/<script name>/)",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint to write (default: OUT_DIR/best.pt), or to read with --eval-only",
    )
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="load --checkpoint and evaluate it on the test set, without training",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="train and evaluate on one tiny batch, then exit"
    )
    args = p.parse_args(argv)
    if args.eval_only and args.checkpoint is None:
        p.error("--eval-only needs --checkpoint PATH (a file written by an earlier training run)")
    return args


def pick_device(name):
    if name == "auto":
        name = (
            "cuda"
            if torch.cuda.is_available()
            else "mps"
            if torch.backends.mps.is_available()
            else "cpu"
        )
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        fail("--device mps was asked for, but Apple MPS is not available")
    return torch.device(name)


def load_fashion_mnist(data_dir, device):
    """Return train and test (images, labels) as tensors on `device`, images normalised, shape (N, 1, 28, 28).

    FashionMNIST is small (47 MB as bytes), so it is decoded and normalised once here and
    batches are sliced from memory, instead of converting image by image every epoch.
    """
    raw = data_dir / "FashionMNIST" / "raw"
    for filename, md5 in FashionMNIST.resources:
        if (raw / filename).exists() and not check_integrity(str(raw / filename), md5):
            fail(
                f"{raw / filename} failed its MD5 check (corrupt or partial download): delete it and run again"
            )
    try:
        splits = [
            FashionMNIST(str(data_dir), train=train, download=True) for train in (True, False)
        ]
    except RuntimeError as err:  # torchvision tried every mirror, or could not parse a file
        names = ", ".join(name for name, _ in FashionMNIST.resources)
        fail(
            f"could not get FashionMNIST ({str(err).strip().splitlines()[0]}). Download {names} "
            f"from {FashionMNIST.mirrors[0]} by hand and put them in {raw}/"
        )
    return [
        (
            ((split.data.float() / 255 - MEAN) / STD).unsqueeze(1).to(device),
            split.targets.to(device),
        )
        for split in splits
    ]


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


def split_train_validation(n_images, val_size, seed):
    """Indices of a random, repeatable training / validation split of n_images."""
    if not 0 < val_size < n_images:
        fail(
            f"--val-size must be between 1 and {n_images - 1} (there are {n_images} training images)"
        )
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    return order[val_size:], order[:val_size]


def save_checkpoint(model, hyperparameters, path):
    # Only tensors and plain Python values: loadable with torch.load(weights_only=True), which
    # refuses to run code hidden in a file (unlike a pickled model object).
    torch.save({"model": model.state_dict(), "hyperparameters": hyperparameters}, path)


def load_checkpoint(path, device):
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        fail(
            f"no checkpoint at {path}: train first (it is written to OUT_DIR/best.pt), or give --checkpoint PATH"
        )
    except Exception as err:  # a truncated file, or not a checkpoint at all
        fail(
            f"could not read the checkpoint {path} ({err.__class__.__name__}: {str(err).splitlines()[0]})"
        )
    model = Classifier(**checkpoint["hyperparameters"]).to(device)
    model.load_state_dict(checkpoint["model"])
    return model


def batches(images, labels, batch_size, shuffle=False):
    order = (
        torch.randperm(len(images), device=images.device) if shuffle else torch.arange(len(images))
    )
    for start in range(0, len(images), batch_size):
        index = order[start : start + batch_size]
        yield images[index], labels[index]


def train_one_epoch(model, images, labels, optimizer, args):
    model.train()
    total_loss = correct = 0
    for x, y in tqdm(
        batches(images, labels, args.batch_size, shuffle=True),
        desc="train",
        leave=False,
        total=-(-len(images) // args.batch_size),
        disable=args.dry_run,
    ):
        log_probs = model(x)
        loss = F.nll_loss(log_probs, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (log_probs.argmax(1) == y).sum().item()
    return total_loss / len(images), correct / len(images)


@torch.no_grad()  # no gradients needed: faster and lighter
def evaluate(model, images, labels, batch_size=2000):
    """Mean loss and accuracy of the model on `images`."""
    model.eval()
    total_loss = correct = 0
    for x, y in batches(images, labels, batch_size):
        log_probs = model(x)
        total_loss += F.nll_loss(log_probs, y, reduction="sum").item()
        correct += (log_probs.argmax(1) == y).sum().item()
    return total_loss / len(images), correct / len(images)


def save_plots(history, model, image, label, out_dir):
    if history:
        epochs = [h["epoch"] for h in history]
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
        for split in ("train", "val"):
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
            ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
        ax_loss.set(xlabel="epoch", ylabel="negative log-likelihood")
        ax_acc.set(xlabel="epoch", ylabel="accuracy")
        ax_loss.legend(), ax_acc.legend()
        fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")

    model.eval()
    with torch.no_grad():
        probabilities = model(image.unsqueeze(0)).exp().squeeze(0).cpu()
    fig, (ax_image, ax_bars) = plt.subplots(
        1, 2, figsize=(9, 3.5), gridspec_kw={"width_ratios": [1, 2]}
    )
    ax_image.imshow((image.squeeze(0).cpu() * STD + MEAN).numpy(), cmap="gray")
    ax_image.set_title(f"true: {CLASSES[label]}")
    ax_image.axis("off")
    ax_bars.barh(CLASSES, probabilities.numpy())
    ax_bars.invert_yaxis()
    ax_bars.set(xlim=(0, 1), xlabel="probability", title="what the model thinks")
    fig.savefig(out_dir / "prediction.png", dpi=100, bbox_inches="tight")
    plt.close("all")


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    print(f"device: {device} ({torch.get_num_threads()} CPU threads)")

    args.data_dir.mkdir(parents=True, exist_ok=True)
    (train_images, train_labels), (test_images, test_labels) = load_fashion_mnist(
        args.data_dir, device
    )
    if args.dry_run:
        args.epochs, args.batch_size, args.val_size = 1, 16, 8
        train_images, train_labels = train_images[:24], train_labels[:24]
        test_images, test_labels = test_images[:16], test_labels[:16]
    print(f"data: {len(train_images)} training and {len(test_images)} test images")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    history = []
    if args.eval_only:
        model = load_checkpoint(args.checkpoint, device)
    else:
        train_index, val_index = split_train_validation(len(train_images), args.val_size, args.seed)
        val_images, val_labels = train_images[val_index], train_labels[val_index]
        train_images, train_labels = train_images[train_index], train_labels[train_index]
        print(f"split: {len(train_images)} training and {len(val_images)} validation images")
        hyperparameters = dict(hidden_sizes=[256, 128, 64], dropout=0.2)
        model = Classifier(**hyperparameters).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
        checkpoint = args.checkpoint or args.out_dir / "best.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        best_val_loss = float("inf")
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            train_loss, train_acc = train_one_epoch(
                model, train_images, train_labels, optimizer, args
            )
            seconds = time.perf_counter() - start
            val_loss, val_acc = evaluate(model, val_images, val_labels)
            # Keep the weights of the epoch that did best on data it never trained on.
            saved = val_loss < best_val_loss
            if saved:
                best_val_loss = val_loss
                save_checkpoint(model, hyperparameters, checkpoint)
            history.append(
                dict(
                    epoch=epoch,
                    train_loss=train_loss,
                    train_accuracy=train_acc,
                    val_loss=val_loss,
                    val_accuracy=val_acc,
                    seconds=seconds,
                )
            )
            print(
                f"epoch {epoch:2d}  train loss {train_loss:.3f}  train acc {train_acc:.4f}  val loss {val_loss:.3f}  "
                f"val acc {val_acc:.4f}  time {seconds:.1f}s{'  (saved best)' if saved else ''}"
            )
        model = load_checkpoint(checkpoint, device)  # the best epoch, not the last

    test_loss, test_acc = evaluate(model, test_images, test_labels)
    print(
        f"test loss {test_loss:.3f}  test acc {test_acc:.4f}  (best checkpoint, test set used once)"
    )
    metrics = dict(
        script=Path(__file__).name,
        device=str(device),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        epochs=len(history),
        eval_split="validation",
        test_loss=test_loss,
        test_accuracy=test_acc,
        train_seconds=sum(h["seconds"] for h in history),
        history=history,
    )
    if device.type == "cuda":
        metrics["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    (args.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_plots(history, model, test_images[0], test_labels[0].item(), args.out_dir)
    print(f"test accuracy {metrics['test_accuracy']:.4f}; metrics and curves in {args.out_dir}")


if __name__ == "__main__":
    main()
