"""An LSTM that learns to count: which letter occurs most often in a sequence?

Model:  letter embedding -> 1-layer LSTM (hidden 200) -> linear over the 10 letters,
        read at each sequence's own last letter. Cross-entropy loss, Adam, one-cycle schedule.
Data:   synthetic, generated here (no download): sequences of 100-300 letters from a-j,
        separated by spaces. In example i, letter (i mod 10) is twice as likely as each
        other letter. The label is the letter that really occurs most often; a tie goes to
        the letter earliest in the alphabet. 1,000 training and 200 validation sequences.
        The task has no test set: the figure to watch is validation accuracy.
Expect: about 0.9 validation accuracy after the default 17 epochs, about 2 s an
        epoch on a 2-core CPU with native bf16, 4 s in fp32 (the tutorial this replaces took
        60 epochs; see benchmarks/README.md).

Run:
    python RNN/lstm_net_counting_chars.py             # train with the defaults
    python RNN/lstm_net_counting_chars.py --dry-run   # a tiny run: checks the set-up in seconds
    python RNN/lstm_net_counting_chars.py --help      # every flag

Writes metrics.json, curves.png and model.pt into --out-dir. To use the trained model:
    checkpoint = torch.load("runs/lstm_net_counting_chars/model.pt", weights_only=True)
    model = LetterCounter(**checkpoint["config"])
    model.load_state_dict(checkpoint["weights"])
"""

import argparse
import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path
from signal import SIGINT, signal

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository runs/ is the top-level one; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
LETTERS = "abcdefghij"
# Token 0 is padding; letter k is token k + 1.
PAD = 0


def make_example(i, rng):
    """Example i: letters separated by spaces, letter (i mod 10) twice as likely as each other."""
    weights = [2 if k == i % 10 else 1 for k in range(len(LETTERS))]
    return " ".join(rng.choices(LETTERS, weights=weights, k=rng.randint(100, 300)))


def most_frequent_letter(text):
    """The label: index of the most frequent letter; a tie goes to the earliest letter."""
    counts = [text.count(letter) for letter in LETTERS]
    # index() finds the first maximum: that is the tie rule.
    return counts.index(max(counts))


def make_dataset(size, seed):
    rng = random.Random(seed)
    texts = [make_example(i, rng) for i in range(size)]
    tokens = [torch.tensor([LETTERS.index(c) + 1 for c in text.split()]) for text in texts]
    return tokens, torch.tensor([most_frequent_letter(text) for text in texts])


def batches(sequences, labels, batch_size, generator=None):
    """Padded batches of sequences of similar length (bucketing), with each one's length.

    Padding to the longest sequence in a batch wastes work on the shorter ones, so sequences
    are sorted by length first. To keep training batches random (when given a seeded
    generator), the shuffled sequences are sorted within pools of 50 batches, and the
    batches are then taken in random order.
    """
    if generator:
        order = torch.randperm(len(sequences), generator=generator).tolist()
    else:
        order = list(range(len(sequences)))
    pool = 50 * batch_size if generator else len(sequences)
    groups = []
    for start in range(0, len(sequences), pool):
        by_length = sorted(order[start : start + pool], key=lambda k: len(sequences[k]))
        groups += [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    if generator:
        groups = [groups[k] for k in torch.randperm(len(groups), generator=generator)]
    for group in groups:
        lengths = torch.tensor([len(sequences[k]) for k in group])
        padded = pad_sequence([sequences[k] for k in group], batch_first=True, padding_value=PAD)
        yield padded, lengths, labels[group]


class LetterCounter(nn.Module):
    def __init__(self, hidden=200, embedding=16):
        super().__init__()
        self.embedding = nn.Embedding(len(LETTERS) + 1, embedding, padding_idx=PAD)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True)
        self.out = nn.Linear(hidden, len(LETTERS))
        # Forget-gate bias 1 (gates are ordered input, forget, cell, output): the cell starts out
        # keeping what it holds, which a counter needs; counting then took off epochs earlier.
        with torch.no_grad():
            self.lstm.bias_ih_l0[hidden : 2 * hidden].fill_(1.0)
            self.lstm.bias_hh_l0[hidden : 2 * hidden].zero_()

    def forward(self, tokens, lengths):
        # CUDA autocast would run cuDNN's LSTM in float16 whatever dtype was asked for, and
        # float16 gradients underflow without loss scaling: on CUDA the LSTM opts out and runs
        # in float32. (This leaves CPU autocast alone: there the LSTM runs in bfloat16.)
        with torch.autocast("cuda", enabled=False):
            # (batch, time, hidden)
            outputs, _ = self.lstm(self.embedding(tokens))
        # Read each sequence at its own last letter, not at the padded end: for a one-directional
        # LSTM on right-padded batches this is exact, and 5-7x faster on a CPU than packing.
        last = (lengths - 1).to(tokens.device).view(-1, 1, 1).expand(-1, 1, outputs.size(2))
        return self.out(outputs.gather(1, last).squeeze(1))


def shuffle_letters(tokens, lengths, generator):
    """Each sequence's letters in a new random order (its padding stays at the end). The counts,
    and so the label, do not depend on the order: a new order each epoch is free extra data."""
    shuffled = tokens.clone()
    for row, length in enumerate(lengths.tolist()):
        shuffled[row, :length] = tokens[row, torch.randperm(length, generator=generator)]
    return shuffled


def train_one_epoch(model, loader, optimizer, scheduler, amp):
    """One pass over the training `loader`: its accuracy and mean loss, as trained."""
    model.train()
    autocast, scaler = amp
    total_loss = correct = count = 0
    device = next(model.parameters()).device
    for tokens, lengths, labels in loader:
        tokens, labels = tokens.to(device), labels.to(device)
        with autocast:
            logits = model(tokens, lengths)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        # The GradScaler does nothing unless the precision is fp16 (conv_net_cifar.py explains);
        # then the gradients must be unscaled before they are clipped.
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        # LSTMs on long sequences can take huge steps: clip the gradients' norm to 1.
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        count += len(labels)
    # Summed on the device, read here once (a read per step would make a GPU wait).
    return dict(train_accuracy=int(correct) / count, train_loss=float(total_loss) / count)


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, loader, autocast, split):
    """The model's accuracy and loss on `loader`, named after the split."""
    model.eval()
    total_loss = correct = count = 0
    device = next(model.parameters()).device
    for tokens, lengths, labels in loader:
        tokens, labels = tokens.to(device), labels.to(device)
        with autocast:
            logits = model(tokens, lengths)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += len(labels)
    accuracy, loss = int(correct) / count, float(total_loss) / count
    return {f"{split}_accuracy": accuracy, f"{split}_loss": loss}


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same data, weights, batch and letter order: the same result on the same CPU
    # (GPU runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    pick_device_and_precision(args)
    # PyTorch's LSTM on a CPU (oneDNN) has no float16 version, and a bf16 one on AVX-512 CPUs only.
    cpu_lstm = dict(fp32=True, bf16=torch.ops.mkldnn._is_mkldnn_bf16_supported(), fp16=False)
    if args.device.type == "cpu" and not cpu_lstm[args.precision]:
        sys.exit(
            f"error: --precision {args.precision}: PyTorch has no {args.precision} LSTM on this "
            "CPU; use --precision auto"
        )
    # Mixed precision, as conv_net_cifar.py explains: matrix maths in bf16, or in fp16 with a
    # GradScaler that keeps small gradients from vanishing (it does nothing otherwise).
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    autocast = torch.autocast(args.device.type, dtype, enabled=args.precision != "fp32")
    scaler = torch.amp.GradScaler(args.device.type, enabled=args.precision == "fp16")

    # Different seeds for the two sets, so validation sequences are new to the model.
    train_data = make_dataset(args.train_size, seed=args.seed)
    val_data = make_dataset(args.val_size, seed=args.seed + 1_000_003)
    print(f"data: {args.train_size} training and {args.val_size} validation sequences (generated)")

    config = dict(hidden=args.hidden)
    model = LetterCounter(**config).to(args.device)
    # Adam adapts each weight's step size to the size of its recent gradients.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # One-cycle: warm up, then anneal. A high peak rate gets counting going early; the
    # annealing settles it. It counts well in a fraction of the tutorial's 60 epochs. It also
    # cycles Adam's beta1 (the momentum of its gradient average), 0.95 -> 0.85 -> 0.95.
    steps_per_epoch = math.ceil(args.train_size / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * steps_per_epoch
    )

    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        # Bucketed batches in a new random order, each sequence's letters shuffled anew.
        batched = batches(*train_data, args.batch_size, generator)
        shuffled = ((shuffle_letters(t, n, generator), n, y) for t, n, y in batched)
        # disable=None: a progress bar on a terminal only, not in a log file.
        progress = tqdm(shuffled, total=steps_per_epoch, disable=None)
        train_figures = train_one_epoch(model, progress, optimizer, scheduler, (autocast, scaler))
        seconds = time.perf_counter() - start
        val_figures = evaluate(model, batches(*val_data, 200), autocast, "val")
        log_epoch(history, epoch=epoch, **train_figures, **val_figures, seconds=seconds)

    write_metrics(args, history, **val_figures)
    save_plots(history, args.out_dir)
    # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    torch.save(dict(weights=weights, config=config), args.out_dir / "model.pt")


# ---- plumbing: flags, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add(
        "--epochs", type=positive(int), default=17, help="passes over the training set (default 17)"
    )
    add("--batch-size", type=positive(int), default=32, help="sequences per step (default 32)")
    add("--lr", type=positive(float), default=1e-2, help="peak Adam learning rate (default 1e-2)")
    add("--hidden", type=positive(int), default=200, help="LSTM hidden size (default 200)")
    add("--train-size", type=positive(int), default=1000, help="training sequences (default 1000)")
    add("--val-size", type=positive(int), default=200, help="validation sequences (default 200)")
    args = parse_with_common_flags(p, argv, data=None)
    # A tiny slice of the data through training and evaluation.
    if args.dry_run:
        args.epochs, args.train_size, args.val_size = 1, 16, 8
        args.batch_size = min(args.batch_size, 16)
    return args


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch, training and validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch, letters shuffled)")
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
