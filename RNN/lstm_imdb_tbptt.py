"""IMDB sentiment with an LSTM trained by truncated backpropagation through time (TBPTT).

Model:  the same as lstm_imdb.py: word embedding (100) -> dropout -> 1-layer LSTM (hidden 256)
        -> dropout -> linear to 2 classes, read at each review's own last word.
Training: each batch of reviews is cut into chunks of --bptt tokens. The LSTM state is
        carried from one chunk to the next, but detached in between, so gradients flow back
        at most --bptt tokens; it starts from zero for every new batch. Each chunk takes its
        own loss (the review's label, read at its last token in the chunk) and an Adam step.
TBPTT's main lesson is lstm_char_lm.py: a language model reading one long text, its state
        carried from batch to batch. Here it is applied to classification instead.
When is TBPTT worth it? When sequences are too long to keep the whole graph of a
        backward pass in memory (long documents, audio, a language model reading a stream),
        or when one update per long sequence is too few. The price: the gradient sees only
        --bptt tokens back; longer-range effects reach the model only through the carried
        state's values. Here the reviews would fit in memory whole (see lstm_imdb.py), yet
        the per-chunk losses and steps make it learn faster than lstm_imdb.py: about 0.90 validation
        accuracy after one epoch, which full backpropagation reached only in a later epoch.
Data:   IMDB, as in lstm_imdb.py: downloaded into the top-level data/ on first use, a seeded
        validation split of the training reviews, the test reviews used once at the end;
        reviews cut to their last --max-len words; plain Python text pipeline, no torchtext.
Expect: about 0.89 test accuracy after the default 3 epochs, 1-3 minutes an epoch and
        3-8 minutes in all on a 2-core CPU with native bf16; in fp32 about 3 and 10
        (benchmarks/README.md).

Run:
    python RNN/lstm_imdb_tbptt.py             # train with the defaults, writes OUT_DIR/model.pt
    python RNN/lstm_imdb_tbptt.py --dry-run   # a tiny run: checks the set-up in seconds
    python RNN/lstm_imdb_tbptt.py --bptt 25   # shorter chunks
    python RNN/lstm_imdb_tbptt.py --predict "A wonderful film." --predict "Far too long."
    echo "One review per line" | python RNN/lstm_imdb_tbptt.py --predict -

Writes model.pt (the best epoch's weights, vocabulary, settings), metrics.json and curves.png
into --out-dir. To use the trained model (tokenize and encode as below):
    checkpoint = torch.load("runs/lstm_imdb_tbptt/model.pt", weights_only=True)
    model = SentimentLSTM(len(checkpoint["vocab"]), **checkpoint["config"]["model"])
    model.load_state_dict(checkpoint["weights"])
"""

import argparse
import contextlib
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path
from signal import SIGINT, signal

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torchvision.datasets.utils import check_integrity, download_and_extract_archive
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
CLASSES = ("negative", "positive")
# Vocabulary indices of "<pad>" and "<unk>".
PAD, UNK = 0, 1

# ---- the text pipeline (what torchtext's Field and BucketIterator used to do) ----

# A token: a run of letters and digits, or any other visible character.
TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text):
    """Lower-case, drop the <br /> line breaks of the IMDB files, split words and punctuation."""
    return TOKEN.findall(text.lower().replace("<br />", " "))


def build_vocab(token_lists, min_freq, max_size):
    """Words of the training reviews, most frequent first: index 0 is <pad>, 1 is <unk>."""
    counts = Counter(token for tokens in token_lists for token in tokens)
    words = [word for word, count in counts.most_common() if count >= min_freq]
    return ["<pad>", "<unk>"] + words[: max(max_size - 2, 0)]


def encode(tokens, index, max_len):
    """Token ids of the last max_len tokens; unknown words become <unk>."""
    return torch.tensor([index.get(token, UNK) for token in tokens[-max_len:]], dtype=torch.long)


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


class SentimentLSTM(nn.Module):
    def __init__(self, vocab_size, embedding=100, hidden=256, dropout=0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding, padding_idx=PAD)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 2)
        # Forget-gate bias 1 (gates are ordered input, forget, cell, output): the cell starts out
        # remembering, so words read hundreds of steps before the end still count early on.
        with torch.no_grad():
            self.lstm.bias_ih_l0[hidden : 2 * hidden].fill_(1.0)
            self.lstm.bias_hh_l0[hidden : 2 * hidden].zero_()

    def forward(self, tokens, lengths, state=None):
        """Logits read at each review's last token in `tokens`, and the LSTM state after the
        last column. `state` is the (h, c) pair left by the previous chunk of the same reviews,
        or None (zeros) for a fresh start."""
        embedded = self.dropout(self.embedding(tokens))
        # CUDA autocast would run cuDNN's LSTM in float16 whatever dtype was asked for, and
        # float16 gradients underflow without loss scaling: on CUDA the LSTM opts out and runs
        # in float32. (This leaves CPU autocast alone: there the LSTM runs in bfloat16.)
        with torch.autocast("cuda", enabled=False):
            # outputs: (batch, time, hidden)
            outputs, state = self.lstm(embedded, state)
        # Read each review at its own last word, not at the padded end, so padding never changes
        # a prediction. For a one-directional LSTM over right-padded batches, gathering that
        # position is exact, and much faster on a CPU than pack_padded_sequence
        # (5-7x for a batch of 32 reviews on a 2-core CPU).
        # A review with no tokens left in this chunk is read at position 0; its logits are unused.
        last = (lengths - 1).clamp(min=0).to(tokens.device).view(-1, 1, 1)
        last = last.expand(-1, 1, outputs.size(2))
        return self.out(self.dropout(outputs.gather(1, last).squeeze(1))), state


def detach(state):
    """The same state values, cut off from the graph of the chunks before: the truncation."""
    return tuple(s.detach() for s in state)


def train_one_epoch(model, loader, optimizer, amp, bptt):
    """One pass over the training `loader`, `bptt` tokens at a time: accuracy and mean loss,
    both read at each review's last token, so they compare with the validation figures."""
    model.train()
    autocast, scaler = amp
    total_loss = correct = count = 0
    device = next(model.parameters()).device
    for tokens, lengths, labels in loader:
        tokens, lengths, labels = tokens.to(device), lengths.to(device), labels.to(device)
        # A new batch of reviews starts from a zero state.
        state = None
        for start in range(0, tokens.size(1), bptt):
            # Keep the state's values, but cut the gradient's path back to earlier chunks.
            if state is not None:
                state = detach(state)
            # Each review's tokens in this chunk; reviews with some take a loss.
            in_chunk = (lengths - start).clamp(0, bptt)
            with autocast:
                logits, state = model(tokens[:, start : start + bptt], in_chunk, state)
            # The mean loss over the reviews with tokens in this chunk. Weighting by 0 or 1, not
            # selecting with logits[in_chunk > 0]: a selection's size depends on the data, so a
            # GPU would have to stop and report it back to the CPU, chunk after chunk.
            active = (in_chunk > 0).float()
            losses = F.cross_entropy(logits.float(), labels, reduction="none")
            loss = (losses * active).sum() / active.sum()
            optimizer.zero_grad()
            # The GradScaler does nothing unless the precision is fp16 (conv_net_cifar.py
            # explains); then the gradients must be unscaled before they are clipped.
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            # LSTMs can take huge steps: clip the gradients' norm to 1.
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            # One optimiser step per chunk.
            scaler.step(optimizer)
            scaler.update()
            # The reviews that end in this chunk: their final prediction counts.
            ending = ((lengths > start) & (lengths <= start + bptt)).float()
            total_loss += (losses.detach() * ending).sum()
            correct += ((logits.argmax(1) == labels) * ending).sum()
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
        # Whole reviews at once: nothing to truncate.
        with autocast:
            logits, _ = model(tokens, lengths)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum")
        correct += (logits.argmax(1) == labels).sum()
        count += len(labels)
    accuracy, loss = int(correct) / count, float(total_loss) / count
    return {f"{split}_accuracy": accuracy, f"{split}_loss": loss}


@torch.no_grad()
def predict(texts, model_path, device):
    """Print the label and its probability for each text, using a saved model."""
    model, vocab, config = load_checkpoint(model_path, device)
    index = {word: i for i, word in enumerate(vocab)}
    for text in texts:
        tokens = tokenize(text)
        if not tokens:
            sys.exit(f"error: nothing to classify in {text!r}: give --predict some words")
        sequence = encode(tokens, index, config["max_len"])
        logits, _ = model(sequence.unsqueeze(0).to(device), torch.tensor([len(sequence)]))
        probabilities = logits.float().softmax(1)[0]
        label = probabilities.argmax().item()
        shown = text[:70] + ("..." if len(text) > 70 else "")
        print(f"{CLASSES[label]:8s} {probabilities[label]:.3f}  {shown}")


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same split, weights, dropout and batch order: the same result on the same
    # CPU (GPU runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args)
    model_path = args.checkpoint or args.out_dir / "model.pt"
    if args.predict:
        return predict(read_texts(args.predict), model_path, args.device)
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

    train_texts, train_labels, test_texts, test_labels = load_imdb(
        args.data_dir, args.dry_run, args.seed
    )
    if not 0 < args.val_size < len(train_texts):
        sys.exit(f"error: --val-size must be between 1 and {len(train_texts) - 1}")
    order = torch.randperm(len(train_texts), generator=torch.Generator().manual_seed(args.seed))
    val_ids, train_ids = order[: args.val_size].tolist(), order[args.val_size :].tolist()

    train_tokens = [tokenize(train_texts[k]) for k in train_ids]
    # The vocabulary comes from the training split only.
    vocab = build_vocab(train_tokens, args.min_freq, args.max_vocab)
    index = {word: i for i, word in enumerate(vocab)}
    train_data = [encode(t, index, args.max_len) for t in train_tokens], train_labels[train_ids]
    val_tokens = [tokenize(train_texts[k]) for k in val_ids]
    val_data = [encode(tokens, index, args.max_len) for tokens in val_tokens], train_labels[val_ids]
    test_data = [encode(tokenize(text), index, args.max_len) for text in test_texts], test_labels
    print(
        f"data: {len(train_ids)} training, {len(val_ids)} validation and {len(test_texts)} test "
        f"reviews; vocabulary of {len(vocab)} words"
    )

    config = dict(model=dict(embedding=100, hidden=256, dropout=0.3), max_len=args.max_len)
    config["bptt"] = args.bptt
    model = SentimentLSTM(len(vocab), **config["model"]).to(args.device)
    # Adam adapts each weight's step size to its recent gradients: little tuning needed.
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)

    history, best_val_loss = [], float("inf")
    steps = math.ceil(len(train_ids) / args.batch_size)
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        # disable=None: a progress bar on a terminal only, not in a log file.
        progress = tqdm(batches(*train_data, args.batch_size, generator), total=steps, disable=None)
        train_figures = train_one_epoch(model, progress, optimizer, (autocast, scaler), args.bptt)
        seconds = time.perf_counter() - start
        val_figures = evaluate(model, batches(*val_data, 256), autocast, "val")
        log_epoch(history, epoch=epoch, **train_figures, **val_figures, seconds=seconds)
        # Keep the epoch that did best on reviews it never trained on.
        if val_figures["val_loss"] < best_val_loss:
            best_val_loss = val_figures["val_loss"]
            save_checkpoint(model, vocab, config, model_path)
            print(f"saved epoch {epoch} to {model_path}: its validation loss is the lowest yet")

    # The best epoch, not the last, measured once on the test set.
    model, _, _ = load_checkpoint(model_path, args.device)
    test_figures = evaluate(model, batches(*test_data, 256), autocast, "test")
    write_metrics(args, history, **test_figures, vocab_size=len(vocab))
    save_plots(history, args.out_dir)


# ---- plumbing: flags, data, checkpoints, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=3, help="passes over the training set (default 3)")
    add(
        "--bptt",
        type=positive(int),
        default=50,
        help="tokens per chunk: gradients flow back at most this far (default 50)",
    )
    # Small batches: on a 2-core CPU an LSTM epoch took about as long at 32 reviews a step as
    # at 256, and 32 gives 8x the optimiser steps for the same time.
    add("--batch-size", type=positive(int), default=32, help="reviews per step (default 32)")
    add("--lr", type=positive(float), default=2e-3, help="Adam learning rate (default 2e-3)")
    add(
        "--max-len",
        type=positive(int),
        default=400,
        help="keep the last MAX_LEN tokens of a review (default 400; 81%% of reviews are shorter)",
    )
    add(
        "--min-freq",
        type=positive(int),
        default=10,
        help="words seen fewer times in training become <unk> (default 10)",
    )
    add(
        "--max-vocab",
        type=positive(int),
        default=10_000,
        help="vocabulary size, <pad> and <unk> included (default 10000)",
    )
    add(
        "--val-size",
        type=positive(int),
        default=2500,
        help="training reviews held out for validation (default 2500)",
    )
    add("--checkpoint", type=Path, help="the saved model (default OUT_DIR/model.pt)")
    add(
        "--predict",
        action="extend",
        nargs="+",
        metavar="TEXT",
        help="classify each TEXT with the saved model instead of training (repeatable); "
        "'--predict -' alone reads one text per line from standard input",
    )
    args = parse_with_common_flags(p, argv, data="aclImdb/")
    training = "epochs bptt batch_size lr max_len min_freq max_vocab val_size".split()
    if args.predict and any(getattr(args, f) != p.get_default(f) for f in training):
        p.error("--predict uses the checkpoint's settings: drop the training flags")
    # A tiny slice of the data through training and evaluation.
    if args.dry_run:
        args.epochs, args.val_size, args.min_freq, args.checkpoint = 1, 8, 1, None
        args.batch_size = min(args.batch_size, 16)
    return args


def read_texts(predict_args):
    """The texts given to --predict; '-' alone means one text per line of standard input, read as
    UTF-8 bytes: decoded in the console's code page (cp1252 on Windows) accents would garble."""
    if predict_args != ["-"]:
        return predict_args
    data = sys.stdin.buffer.read()
    try:
        # utf-8-sig: also UTF-8 with the byte-order mark some editors (and PowerShell) put first.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        sys.exit(f"error: standard input line {line} is not UTF-8 text: give it UTF-8")
    texts = [line for line in text.splitlines() if line.strip()]
    if not texts:
        sys.exit("error: --predict - read no text from standard input: give one review per line")
    return texts


def load_imdb(data_dir, dry_run, seed):
    """Training and test (texts, labels); for --dry-run, a few random ones of each (by --seed)."""
    folder = get_imdb(data_dir)
    train_texts, train_labels = read_reviews(folder, "train")
    test_texts, test_labels = read_reviews(folder, "test")
    if dry_run:
        # Their own generator: the model's initial weights stay those of a full run.
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(train_texts), generator=generator)[:24]
        train_texts, train_labels = [train_texts[k] for k in keep], train_labels[keep]
        keep = torch.randperm(len(test_texts), generator=generator)[:16]
        test_texts, test_labels = [test_texts[k] for k in keep], test_labels[keep]
    return train_texts, train_labels, test_texts, test_labels


def get_imdb(data_dir):
    """The aclImdb/ folder under data_dir: used as it is if there, else downloaded and unpacked."""
    folder = data_dir / "aclImdb"
    if folder.is_dir():
        return folder
    archive = data_dir / Path(URL).name
    if archive.exists() and not check_integrity(str(archive), MD5):
        sys.exit(f"error: {archive} failed its MD5 check (corrupt or partial download): delete it")
    # No network, a broken connection, a download failing its MD5 check:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(URL, str(data_dir), md5=MD5)
    except (OSError, RuntimeError) as err:
        sys.exit(
            f"error: could not get IMDB ({err!r}). Download {URL} by hand and put it in "
            f"{data_dir}/ (or unpack it there, giving {folder}/)"
        )
    return folder


def read_reviews(folder, split):
    """Texts and labels (0 negative, 1 positive) of aclImdb/SPLIT/{neg,pos}/*.txt, by file name."""
    texts, labels = [], []
    for label, name in enumerate(("neg", "pos")):
        files = sorted((folder / split / name).glob("*.txt"))
        if not files:
            sys.exit(
                f"error: no reviews in {folder / split / name}/: is {folder} a complete aclImdb?"
            )
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                sys.exit(
                    f"error: could not read the review {path} ({type(err).__name__}): replace it"
                )
            if not text.strip():
                sys.exit(f"error: the review {path} is empty: replace it from the archive")
            texts.append(text)
            labels.append(label)
    return texts, torch.tensor(labels)


def save_checkpoint(model, vocab, config, path):
    # Only tensors, strings and numbers: loadable with torch.load(weights_only=True), which
    # refuses to run code hidden in a file (unlike a pickled model object). CPU tensors: the
    # file loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(weights=weights, vocab=vocab, config=config), path)


def load_checkpoint(path, device):
    """(model, vocabulary, settings) saved at `path`, or a one-line error saying what is wrong."""
    if not path.is_file():
        sys.exit(f"error: no checkpoint at {path}: train first (it writes --checkpoint)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        config = checkpoint["config"]
        model = SentimentLSTM(len(checkpoint["vocab"]), **config["model"]).to(device)
        model.load_state_dict(checkpoint["weights"])
    # Empty, truncated, not a torch file, or another script's checkpoint: one line.
    except Exception as err:
        sys.exit(f"error: {path} is not a checkpoint of this script ({err!r})")
    return model.eval(), checkpoint["vocab"], config


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch, training and validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch, with dropout)")
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
