"""An LSTM that learns to count: which letter occurs most often in a sequence?

Model:  letter embedding -> 1-layer LSTM (hidden 200) -> linear over the 10 letters,
        read at each sequence's own last letter. Cross-entropy loss, Adam, one-cycle schedule.
Data:   synthetic, generated here (no download): sequences of 100-300 letters from a-j,
        separated by spaces. In example i, letter (i mod 10) is twice as likely as each
        other letter. The label is the letter that really occurs most often; a tie goes to
        the letter earliest in the alphabet. 1,000 training and 200 validation sequences.
        The task has no test set: the figure to watch is validation accuracy.
Expect: about 0.9 validation accuracy after the default 17 epochs, about 2 s an
        epoch on a 2-core CPU (the tutorial this replaces took 60 epochs; README has
        measured figures).

Run:
    python RNN/lstm_net_counting_chars.py             # train with the defaults
    python RNN/lstm_net_counting_chars.py --dry-run   # one tiny batch: checks the set-up in seconds
    python RNN/lstm_net_counting_chars.py --help      # every setting

Writes metrics.json and curves.png into --out-dir.
"""

import argparse
import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; works without a display (servers, CI)
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# Inside this repository all scripts share its top-level data/ and runs/ (the folder holding
# data/README.md); a copy of this script anywhere else keeps both in its own folder.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
LETTERS = "abcdefghij"
PAD = 0  # token 0 is padding; letter k is token k + 1


def make_example(i, rng):
    """Example i: letters separated by spaces, letter (i mod 10) twice as likely as each other."""
    weights = [2 if k == i % 10 else 1 for k in range(len(LETTERS))]
    return " ".join(rng.choices(LETTERS, weights=weights, k=rng.randint(100, 300)))


def most_frequent_letter(text):
    """The label: index of the most frequent letter; a tie goes to the earliest letter."""
    counts = [text.count(letter) for letter in LETTERS]
    return counts.index(max(counts))  # index() finds the first maximum: that is the tie rule


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
            outputs, _ = self.lstm(self.embedding(tokens))  # (batch, time, hidden)
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


def train_one_epoch(model, data, optimizer, scheduler, scaler, autocast, args, device, generator):
    """One pass over the training set: (mean loss, accuracy on the batches as they were trained)."""
    model.train()
    total_loss = correct = 0
    steps = math.ceil(len(data[0]) / args.batch_size)
    # disable=None: no progress bar when the output is not a terminal (a log file, CI).
    for tokens, lengths, labels in tqdm(
        batches(*data, args.batch_size, generator), total=steps, disable=None
    ):
        tokens = shuffle_letters(tokens, lengths, generator).to(device)
        labels = labels.to(device)
        with autocast:
            logits = model(tokens, lengths)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 only: the loss is scaled up so small gradients survive
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(
            model.parameters(), 1.0
        )  # LSTMs on long sequences can take huge steps
        scaler.step(optimizer)  # (skips the step if any gradient overflowed)
        scaler.update()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
    return total_loss / len(data[0]), correct / len(data[0])


@torch.no_grad()  # no gradients needed: faster and lighter
def evaluate(model, data, autocast, device, batch_size=200):
    """(mean loss, accuracy) of the model on the (sequences, labels) in `data`."""
    model.eval()
    total_loss = correct = 0
    for tokens, lengths, labels in batches(*data, batch_size):
        tokens, labels = tokens.to(device), labels.to(device)
        with autocast:
            logits = model(tokens, lengths)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    return total_loss / len(data[0]), correct / len(data[0])


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the initial weights
    device, device_why = pick_device(args.device)
    precision, precision_why = pick_precision(args.precision, device)
    if precision == "fp16" and device.type == "cpu":
        fail("--precision fp16: PyTorch has no float16 LSTM on the CPU (oneDNN); use bf16 or fp32")
    print(f"device: {device} ({device_why}); precision: {precision} ({precision_why})")
    autocast = autocast_for(device, precision)

    # Different seeds for the two sets, so validation sequences are new to the model.
    train_data = make_dataset(args.train_size, seed=args.seed)
    val_data = make_dataset(args.val_size, seed=args.seed + 1_000_003)
    print(f"data: {args.train_size} training and {args.val_size} validation sequences (generated)")

    model = LetterCounter(args.hidden).to(device)
    # Adam adapts each weight's step size to the size of its recent gradients.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # One-cycle: warm up, then anneal. A high peak rate gets counting going early; the
    # annealing settles it. It reached the target in a fraction of the tutorial's 60 epochs.
    total_steps = args.epochs * math.ceil(args.train_size / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps)
    # fp16 keeps too few exponent bits for small gradients: GradScaler scales the loss up before
    # backward and the gradients down before the step. With bf16 or fp32 it does nothing.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    generator = torch.Generator().manual_seed(args.seed)  # batch order and letter order

    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model, train_data, optimizer, scheduler, scaler, autocast, args, device, generator
        )
        seconds = time.perf_counter() - start
        val_loss, val_acc = evaluate(model, val_data, autocast, device)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc))
        history[-1].update(val_loss=val_loss, val_accuracy=val_acc, seconds=seconds)
        print(epoch_line(history[-1]))

    save_plots(history, args.out_dir)
    write_metrics(args, device, precision, history, val_loss=val_loss, val_accuracy=val_acc)


# ------------------------------------------------------------------------------------------
# Plumbing: flags, errors, device and precision, plots. The lesson is above.
# ------------------------------------------------------------------------------------------


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
    add_common_flags(p, data=None)
    args = p.parse_args(argv)
    if args.dry_run:  # one tiny batch through training and evaluation
        args.epochs, args.batch_size, args.train_size, args.val_size = 1, 8, 16, 8
    return args


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch, training and validation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch, letters shuffled)")
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
