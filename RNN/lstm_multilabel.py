"""Emotions in Reddit comments with an LSTM: one comment, any number of labels (multilabel).

Model:  word embedding (128) -> dropout -> bidirectional LSTM (128 each way) -> max and mean
        over the words -> dropout -> linear to one logit per label: each label is its own
        yes/no question (sigmoid, binary cross-entropy), so a comment gets any number of them.
Data:   GoEmotions (Demszky et al., ACL 2020): 58,009 Reddit comments with one or more of 27
        emotions or "neutral", split 43,410 train / 5,426 validation ("dev" in its files) /
        5,427 test, downloaded into data/goemotions/ on first use. The validation split picks
        the best epoch and one threshold per label; the test split is used once, at the end.
        Or, with --dataset jigsaw, Kaggle's Jigsaw Toxic Comment Classification Challenge
        (159,571 training comments, 6 labels; Kaggle needs an account, so its files are put in
        place by hand: the script says how). Or your own comments: --csv FILE, a CSV file
        with a text column and one 0/1 column per label (RNN/README.md, "Train on your own text").
Expect: GoEmotions test macro-F1 (the mean of the 28 labels' F1, the paper's headline; BERT-base
        reached 0.46) 0.46-0.48 after the default 4 epochs, 10-20 s an epoch (22 s in fp32) and
        1-2 minutes in all on a 2-core CPU (RNN/README.md has measured figures); rare labels
        score lowest.

Run:
    python RNN/lstm_multilabel.py             # GoEmotions, the defaults; writes OUT_DIR/model.pt
    python RNN/lstm_multilabel.py --dry-run   # a tiny run: checks the set-up in seconds
    python RNN/lstm_multilabel.py --predict "Thank you so much!" --predict "Why would you?"
    echo "One comment per line" | python RNN/lstm_multilabel.py --predict -
    python RNN/lstm_multilabel.py --csv comments.csv --text-column text   # your own labels

Writes model.pt, metrics.json, curves.png and labels.png (each label's test F1 beside its share
of the training comments) into --out-dir. To use the model elsewhere:
    checkpoint = torch.load("runs/lstm_multilabel/model.pt", weights_only=True)
    labels, config = checkpoint["labels"], checkpoint["config"]
    model = MultilabelLSTM(len(checkpoint["vocab"]), len(labels), **config["model"])
    model.load_state_dict(checkpoint["weights"])
then tokenize, encode and threshold as predict() does.
"""

import argparse
import contextlib
import csv
import io
import json
import re
import sys
import time
import urllib.request
import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from signal import SIGINT, signal

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
GOEMOTIONS_URL = "https://raw.githubusercontent.com/google-research/google-research/master/"
GOEMOTIONS_URL += "goemotions/data/"
GOEMOTIONS_FILES = ("train.tsv", "dev.tsv", "test.tsv", "emotions.txt")
# The labels in the order of emotions.txt: the files give a comment's labels as these indices.
GOEMOTIONS_LABELS = (
    "admiration amusement anger annoyance approval caring confusion curiosity desire "
    "disappointment disapproval disgust embarrassment excitement fear gratitude grief joy love "
    "nervousness optimism pride realization relief remorse sadness surprise neutral"
).split()
JIGSAW_FOLDER = "jigsaw-toxic-comment-classification-challenge"
JIGSAW_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
# The share of a training file (Jigsaw's, or --csv's) that validates (a seeded draw).
VAL_FRACTION = 0.1
# The vocabulary index of "<unk>", which stands for any word not in the vocabulary. Nothing is
# padded here, so there is no "<pad>" and "<unk>" comes first (the IMDB scripts' UNK is 1).
UNKNOWN = 0
# The thresholds tried for each label, from high to low, so that a tie goes to the higher one.
THRESHOLD_GRID = torch.linspace(0.99, 0.01, 99)

# ---- the text pipeline, as in lstm_imdb.py ----

# A run of letters/digits, or any other visible character (punctuation, emoji).
TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text):
    """Lower-case, split words and punctuation (Reddit comments have no <br /> to drop)."""
    return TOKEN.findall(text.lower())


def build_vocab(token_lists, min_freq, max_size):
    """Words of the training comments, most frequent first, after <unk> (nothing is padded)."""
    counts = Counter(token for tokens in token_lists for token in tokens)
    words = [word for word, count in counts.most_common() if count >= min_freq]
    return ["<unk>"] + words[: max(max_size - 1, 0)]


def encode(tokens, index, max_len):
    """Token ids of the last max_len tokens; unknown words (or no words at all) are <unk>."""
    return torch.tensor([index.get(token, UNKNOWN) for token in tokens[-max_len:]] or [UNKNOWN])


def batches(sequences, targets, batch_size, generator=None):
    """Batches of comments that all have the same number of tokens (bucketing by length).

    Nothing is padded, so the backward half of the LSTM starts at each comment's own last word
    and max and mean see its words only: a comment gets the same probabilities in any batch.
    Given a seeded generator, which comments share a batch and the batch order are random.
    """
    order = torch.randperm(len(sequences), generator=generator) if generator else None
    by_length = defaultdict(list)
    for k in range(len(sequences)) if order is None else order.tolist():
        by_length[len(sequences[k])].append(k)
    groups = [
        same[i : i + batch_size]
        for same in by_length.values()
        for i in range(0, len(same), batch_size)
    ]
    if generator:
        groups = [groups[k] for k in torch.randperm(len(groups), generator=generator)]
    for group in groups:
        yield torch.stack([sequences[k] for k in group]), targets[group]


class MultilabelLSTM(nn.Module):
    def __init__(self, vocab_size, num_labels, embedding, hidden, dropout=0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        # One logit per label, from the max and the mean of both directions' outputs.
        self.out = nn.Linear(4 * hidden, num_labels)

    def forward(self, tokens):
        embedded = self.dropout(self.embedding(tokens))
        # CUDA autocast would run cuDNN's LSTM in float16 whatever dtype was asked for, and
        # float16 gradients underflow without loss scaling: on CUDA the LSTM opts out and runs
        # in float32. (This leaves CPU autocast alone: there the LSTM runs in bfloat16.)
        with torch.autocast("cuda", enabled=False):
            outputs, _ = self.lstm(embedded)
        # Max over the words finds the strongest sign of each feature anywhere in the comment
        # (one "thanks" is enough for gratitude); the mean says how much of the comment is so.
        pooled = torch.cat([outputs.amax(1), outputs.mean(1)], 1)
        return self.out(self.dropout(pooled))


def train_one_epoch(model, loader, optimizer, pos_weight, amp):
    """One pass over the training loader: the mean loss per comment and label."""
    model.train()
    autocast, scaler = amp
    device = next(model.parameters()).device
    total_loss = count = 0
    for tokens, targets in loader:
        tokens, targets = tokens.to(device), targets.to(device)
        with autocast:
            logits = model(tokens)
        # One independent yes/no question per label: the sigmoid of each logit is that label's
        # probability, scored against 0 or 1 by binary cross-entropy. (Softmax with
        # cross-entropy would make the labels compete for one unit of probability, as if a
        # comment could not be both grateful and joyful.)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight)
        optimizer.zero_grad()
        # fp16 only (else the scaler does nothing): see conv_net_cifar.py.
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.detach() * len(targets)
        count += len(targets)
    # Summed on the device, read here once (a read per step would make a GPU wait).
    return {"train_loss": float(total_loss) / count}


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, loader, autocast, split, pos_weight):
    """Loss and mean ROC AUC, named after the split, with every comment's label probabilities
    and targets (for F1)."""
    model.eval()
    device = next(model.parameters()).device
    total_loss, probabilities, targets = 0, [], []
    for tokens, batch_targets in loader:
        with autocast:
            logits = model(tokens.to(device)).float()
        batch_targets = batch_targets.to(device)
        loss = F.binary_cross_entropy_with_logits(logits, batch_targets, pos_weight=pos_weight)
        total_loss += loss.detach() * len(batch_targets)
        probabilities.append(logits.sigmoid())
        targets.append(batch_targets)
    # Gathered on the device, copied to the CPU once.
    probabilities, targets = torch.cat(probabilities).cpu(), torch.cat(targets).cpu()
    mean_auc = roc_auc(probabilities, targets).nanmean().item()
    figures = {f"{split}_loss": float(total_loss) / len(targets), f"{split}_mean_auc": mean_auc}
    return figures | dict(probabilities=probabilities, targets=targets)


# ---- the figures of a multilabel classifier ----


def f1_scores(predicted, targets):
    """Per label precision, recall and F1; macro-F1 (their mean); micro-F1 (pooled counts).

    Each label is one yes/no task: its true positives are the comments rightly given it, its
    false positives those wrongly given it, its false negatives those it missed. A ratio with
    nothing to count (the precision of a label never predicted) is 0, as in scikit-learn.
    """
    predicted, targets = predicted.bool(), targets.bool()
    true_pos = (predicted & targets).sum(0).float()
    false_pos = (predicted & ~targets).sum(0).float()
    false_neg = (~predicted & targets).sum(0).float()
    precision = true_pos / (true_pos + false_pos).clamp(min=1)
    recall = true_pos / (true_pos + false_neg).clamp(min=1)
    # F1, the harmonic mean of precision and recall, is 2 TP / (2 TP + FP + FN).
    f1 = 2 * true_pos / (2 * true_pos + false_pos + false_neg).clamp(min=1)
    # Macro-F1 weighs every label alike, rare or common. Micro-F1 pools the counts of all the
    # labels first, so the common ones (neutral) weigh most.
    micro_f1 = 2 * true_pos.sum() / (2 * true_pos + false_pos + false_neg).sum().clamp(min=1)
    figures = dict(precision=precision, recall=recall, f1=f1, macro_f1=f1.mean().item())
    return figures | dict(micro_f1=micro_f1.item())


def roc_auc(probabilities, targets):
    """Per label, the chance that a comment with the label scores above one without it (a tie
    counts half): the area under its ROC curve, whatever the threshold. NaN for a label that is
    on every comment or on none. The mean over labels is the Jigsaw competition's metric."""
    aucs = []
    for scores, present in zip(probabilities.T, targets.bool().T):
        positives, negatives = present.sum(), (~present).sum()
        # Rank all the scores, tied ones sharing their mean rank. The positives' rank sum, less
        # the least it could be, counts the (positive, negative) pairs in the right order.
        _, group, counts = torch.unique(scores, return_inverse=True, return_counts=True)
        mean_rank = counts.cumsum(0) - (counts - 1) / 2
        ordered_pairs = mean_rank[group][present].sum() - positives * (positives + 1) / 2
        aucs.append(ordered_pairs / (positives * negatives))
    return torch.stack(aucs)


def tune_thresholds(probabilities, targets):
    """Per label, the threshold of THRESHOLD_GRID with the best F1 on these comments: the
    validation split's, never the test split's (that would flatter the test figures)."""
    f1_at = torch.stack([f1_scores(probabilities > t, targets)["f1"] for t in THRESHOLD_GRID])
    return THRESHOLD_GRID[f1_at.argmax(0)]


@torch.no_grad()
def predict(texts, model_path, device):
    """For each text: every label above its threshold with its probability, most likely first."""
    model, saved = load_checkpoint(model_path, device)
    index = {word: i for i, word in enumerate(saved["vocab"])}
    if empty := [text for text in texts if not tokenize(text)]:
        sys.exit(f"error: nothing to classify in {empty[0]!r}: give --predict some words")
    for text in texts:
        sequence = encode(tokenize(text), index, saved["config"]["max_len"]).to(device)
        chances = model(sequence.unsqueeze(0))[0].float().sigmoid().tolist()
        ranked = sorted(range(len(chances)), key=lambda k: -chances[k])
        found = [k for k in ranked if chances[k] > saved["thresholds"][k]]
        line = ", ".join(f"{saved['labels'][k]} {chances[k]:.3f}" for k in found or ranked[:1])
        line += "" if found else " (the most likely; no label is above its threshold)"
        print(f"{line}  | {text[:70]}{'...' if len(text) > 70 else ''}")


def main(argv=None):
    args = parse_args(argv)
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
    # The same seed, the same weights, dropout and batches: the same result on the same CPU (GPU
    # runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    # Mixed precision, as conv_net_cifar.py explains: matrix maths in bf16, or in fp16 with a
    # GradScaler that keeps small gradients from vanishing (it does nothing otherwise).
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    autocast = torch.autocast(args.device.type, dtype, enabled=args.precision != "fp32")
    scaler = torch.amp.GradScaler(args.device.type, enabled=args.precision == "fp16")

    splits, labels = load_dataset(args)
    # The vocabulary comes from the training split only, like everything the model learns.
    token_lists = [[tokenize(text) for text in texts] for texts, _ in splits]
    vocab = build_vocab(token_lists[0], args.min_freq, args.max_vocab)
    index = {word: i for i, word in enumerate(vocab)}
    sizes = [len(texts) for texts, _ in splits]
    print("data: {} training, {} validation, {} test comments; ".format(*sizes), end="")
    print(f"{len(labels)} labels; {len(vocab)} words in the vocabulary")
    train_data, val_data, test_data = (
        ([encode(tokens, index, args.max_len) for tokens in lists], targets)
        for lists, (_, targets) in zip(token_lists, splits)
    )

    config = dict(model=dict(embedding=128, hidden=128, dropout=0.3), max_len=args.max_len)
    model = MultilabelLSTM(len(vocab), len(labels), **config["model"]).to(args.device)
    # Each label's share of the training comments: grief is on 0.18% of them, neutral on 33%.
    share = train_data[1].mean(0)
    # pos_weight counts each comment that has a label this many times over in the loss, so that
    # a rare label's few comments weigh more against the many that say "no". The default power
    # was picked by hand on the validation split: after 4 epochs (seed 0) its macro-F1 was
    # 0.517 with the square root of the ratio (power 0.5, the default), 0.494 with no weight
    # (power 0) and 0.485 with the full ratio (power 1).
    pos_weight = (((1 - share) / share.clamp(min=1e-4)) ** args.pos_weight_power).to(args.device)
    # fused: Adam's update in one pass over each weight tensor, not a dozen. Without it, updating
    # the embedding's 1.7 million weights at every step took half the training time on a 2-core
    # CPU (with batches of 32).
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    # What model.pt holds besides the weights and thresholds (weights_only=True loads it: only
    # tensors, strings and numbers, unlike a pickled model, whose loading could run any code).
    dataset = str(args.csv or args.dataset)
    contents = dict(vocab=vocab, labels=labels, config=config | dict(dataset=dataset))
    model_path.parent.mkdir(parents=True, exist_ok=True)

    history, best_epoch = [], None
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        epoch_batches = list(batches(*train_data, args.batch_size, generator))
        # GoEmotions' defaults take 2,824 steps; a small file of comments may give a tenth of that.
        steps = args.epochs * len(epoch_batches)
        if epoch == 1 and steps < 1000 and not args.dry_run:
            print(f"note: only {steps} training steps; for few comments try more --epochs")
        # disable=None: a progress bar on a terminal only, not in a log file.
        epoch_batches = tqdm(epoch_batches, disable=None)
        train_figures = train_one_epoch(
            model, epoch_batches, optimizer, pos_weight, (autocast, scaler)
        )
        seconds = time.perf_counter() - start
        val_figures = evaluate(model, batches(*val_data, 256), autocast, "val", pos_weight)
        probabilities, targets = val_figures.pop("probabilities"), val_figures.pop("targets")
        thresholds = tune_thresholds(probabilities, targets)
        val_f1 = f1_scores(probabilities > thresholds, targets)["macro_f1"]
        log_epoch(
            history,
            epoch=epoch,
            **train_figures,
            **val_figures,
            val_macro_f1=val_f1,
            seconds=seconds,
        )
        # Keep the epoch with the best validation macro-F1, with the thresholds tuned for it.
        if best_epoch is None or val_f1 > history[best_epoch - 1]["val_macro_f1"]:
            best_epoch, contents["thresholds"] = epoch, [round(t, 2) for t in thresholds.tolist()]
            # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
            weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
            torch.save(dict(contents, weights=weights), model_path)

    # The best epoch, with its thresholds: the test split is used once, here.
    model, saved = load_checkpoint(model_path, args.device)
    test_figures = evaluate(model, batches(*test_data, 256), autocast, "test", pos_weight)
    thresholds = torch.tensor(saved["thresholds"])
    tuned = f1_scores(test_figures["probabilities"] > thresholds, test_figures["targets"])
    at_half = f1_scores(test_figures["probabilities"] > 0.5, test_figures["targets"])
    aucs = roc_auc(test_figures["probabilities"], test_figures["targets"])
    per_label = report_labels(labels, share, thresholds, tuned, aucs)
    print(
        f"test, epoch {best_epoch}: macro-F1 {tuned['macro_f1']:.4f} with the tuned thresholds, "
        f"{at_half['macro_f1']:.4f} with 0.5 for every label"
    )
    save_plots(history, per_label, args.out_dir)
    results = dict(test_macro_f1=tuned["macro_f1"], test_micro_f1=tuned["micro_f1"])
    results["test_mean_auc"] = aucs.nanmean().item()
    results["test_macro_f1_at_0.5"] = at_half["macro_f1"]
    results["test_micro_f1_at_0.5"] = at_half["micro_f1"]
    write_metrics(args, history, **results, test_per_label=per_label, best_epoch=best_epoch)


# ---- plumbing: flags, data files, checkpoints, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    about = "goemotions (the default, downloaded) or jigsaw (Kaggle's files, put in place by hand)"
    add("--dataset", default="goemotions", choices=["goemotions", "jigsaw"], help=about)
    add("--epochs", type=positive(int), default=4, help="passes over the training set (default 4)")
    add(
        "--batch-size",
        type=positive(int),
        default=64,
        help="at most this many comments per step (default 64)",
    )
    add("--lr", type=positive(float), default=3e-3, help="Adam learning rate (default 3e-3)")
    about = "weigh a label's comments by (negatives/positives)**POWER in the loss (default 0.5)"
    add("--pos-weight-power", type=float, default=0.5, metavar="POWER", help=about)
    add("--max-len", type=positive(int), default=200, help="last tokens kept (default 200)")
    add("--min-freq", type=positive(int), default=2, help="rarer words are <unk> (default 2)")
    add("--max-vocab", type=positive(int), default=20_000, help="vocabulary size (default 20000)")
    add("--checkpoint", type=Path, help="the saved model (default OUT_DIR/model.pt)")
    about = "label each TEXT with the saved model (repeatable); '-': one text a line from stdin"
    add("--predict", action="extend", nargs="+", metavar="TEXT", help=about)
    about = "your own comments instead of a dataset: a UTF-8 CSV file with a header row, a text "
    about += "column, and as labels every other column that holds only 0 and 1"
    add("--csv", type=Path, metavar="FILE", help=about)
    about = "the test comments for --csv, same columns (default: a seeded fifth of FILE)"
    add("--test-csv", type=Path, metavar="FILE", help=about)
    add("--text-column", default="text", help="the CSV files' column of texts (default 'text')")
    args = parse_with_common_flags(p, argv, data=f"goemotions/ or {JIGSAW_FOLDER}/")
    # --predict reads everything else from the checkpoint: a training flag with it is a mistake.
    allowed = ("predict", "checkpoint", "out_dir", "device")
    given = [k for k, value in vars(args).items() if k not in allowed and value != p.get_default(k)]
    if args.predict and given:
        flags = " ".join("--" + name.replace("_", "-") for name in given)
        sys.exit(f"error: {flags}: not with --predict (it takes --checkpoint, --out-dir, --device)")
    if not args.csv and {"test_csv", "text_column"} & set(given):
        p.error("--test-csv and --text-column go with --csv")
    if args.csv and {"dataset", "data_dir"} & set(given):
        p.error("--dataset and --data-dir choose a dataset: drop them with --csv")
    if args.dry_run:
        args.epochs, args.min_freq, args.checkpoint = 1, 1, None
        args.batch_size = min(args.batch_size, 16)
    return args


def read_texts(predict_args):
    """The texts given to --predict; '-' alone means one text per line of standard input, read as
    UTF-8 bytes: decoded in the console's code page (cp1252 on Windows) accents would garble."""
    if predict_args != ["-"]:
        return predict_args
    text = decode_utf8(sys.stdin.buffer.read(), "standard input")
    texts = [line for line in text.splitlines() if line.strip()]
    if not texts:
        sys.exit("error: --predict - read no text from standard input: give one comment per line")
    return texts


def load_dataset(args):
    """(train, validation, test), each (texts, multi-hot targets); and the label names."""
    if args.csv:
        (train, labels), test = read_label_csv(args.csv, args.text_column), None
        if args.test_csv:
            test = read_label_csv(args.test_csv, args.text_column, labels)[0]
        splits = split_csv(train, test, args.seed)
    elif args.dataset == "goemotions":
        folder = get_goemotions(args.data_dir)
        splits = [read_goemotions(folder / f"{name}.tsv") for name in ("train", "dev", "test")]
        labels = GOEMOTIONS_LABELS
    else:
        splits = read_jigsaw(args.data_dir / JIGSAW_FOLDER, args.seed)
        labels = JIGSAW_LABELS
    if args.dry_run:
        splits = [(texts[:16], targets[:16]) for texts, targets in splits]
    return splits, labels


def get_goemotions(data_dir):
    """data_dir/goemotions/, once the files missing there are downloaded."""
    folder = data_dir / "goemotions"
    missing = [name for name in GOEMOTIONS_FILES if not (folder / name).is_file()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in missing:
            print(f"downloading {GOEMOTIONS_URL}{name}")
            with urllib.request.urlopen(GOEMOTIONS_URL + name, timeout=60) as response:
                (folder / f"{name}.part").write_bytes(response.read())
            (folder / f"{name}.part").rename(folder / name)
    except OSError as err:
        urls = " ".join(GOEMOTIONS_URL + name for name in missing)
        sys.exit(f"error: could not download GoEmotions ({err!r}): put {urls} in {folder}/")
    if read_utf8(folder / "emotions.txt").split() != GOEMOTIONS_LABELS:
        sys.exit(f"error: {folder / 'emotions.txt'} does not list the 28 GoEmotions labels")
    return folder


def read_utf8(path):
    """A file's text, or a one-line error naming the file, and the line that is not UTF-8."""
    try:
        return decode_utf8(path.read_bytes(), path)
    except OSError as err:
        sys.exit(f"error: could not read {path} ({type(err).__name__}: {err.strerror})")


def decode_utf8(data, source):
    """Bytes as text, or a one-line error naming their source and the line that is not UTF-8."""
    try:
        # utf-8-sig: also UTF-8 with the byte-order mark some editors (and Excel) put first.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        sys.exit(f"error: {source} line {line} is not UTF-8 text: save it as UTF-8")


def read_goemotions(path):
    """(texts, targets) of a GoEmotions .tsv file."""
    texts = []
    # Split at "\n" only: splitlines() would also split at the "\x85" or "\u2028" of a text.
    lines = read_utf8(path).removesuffix("\n").split("\n")
    targets = torch.zeros(len(lines), len(GOEMOTIONS_LABELS))
    for number, line in enumerate(lines, 1):
        fields = line.split("\t")
        if len(fields) != 3:
            sys.exit(f"error: {path} line {number}: {len(fields)} tab-separated fields, not 3")
        ids = fields[1].split(",")
        if not all(i.isdigit() and int(i) < len(GOEMOTIONS_LABELS) for i in ids):
            sys.exit(f"error: {path} line {number}: label ids {fields[1]!r}, not all in 0-27")
        texts.append(fields[0])
        targets[number - 1, [int(i) for i in ids]] = 1
    return texts, targets


def read_jigsaw(folder, seed):
    """Train (less a seeded validation share), validation and test splits: (texts, targets)."""
    train = read_kaggle_csv(folder, "train.csv", ["id", "comment_text", *JIGSAW_LABELS])
    test_texts = read_kaggle_csv(folder, "test.csv", ["id", "comment_text"])
    test_labels = read_kaggle_csv(folder, "test_labels.csv", ["id", *JIGSAW_LABELS])
    if missing := test_labels.keys() - test_texts.keys():
        sys.exit(f"error: test_labels.csv has ids that test.csv lacks, such as {min(missing)}")
    # Kaggle scored only the test comments whose labels are not -1: so does this script.
    test = [(test_texts[key][0], targets) for key, (_, targets) in test_labels.items()]
    test = [(text, targets) for text, targets in test if -1 not in targets]
    train = list(train.values())
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    val_size = round(VAL_FRACTION * len(train))
    splits = [[train[k] for k in order[val_size:]], [train[k] for k in order[:val_size]], test]
    return [([x for x, _ in rows], torch.tensor([y for _, y in rows]).float()) for rows in splits]


def read_label_csv(path, text_column, labels=None):
    """((texts, multi-hot targets), label names) of a CSV file: its text column, and as labels
    every other column holding only 0 and 1 (unless the labels are given: the training file's)."""
    try:
        rows = csv.reader(io.StringIO(read_utf8(path), newline=""))
        header = next(rows, [])
        if text_column not in header:
            sys.exit(
                f"error: {path} has no column {text_column!r}; its columns: {header} "
                "(choose with --text-column)"
            )
        texts, fields = [], []
        for row in rows:
            # A blank line is no row.
            if not row:
                continue
            if len(row) != len(header):
                sys.exit(
                    f"error: {path} line {rows.line_num}: {len(row)} fields, not {len(header)}"
                )
            if not row[header.index(text_column)].strip():
                sys.exit(f"error: {path} line {rows.line_num} has no text: fill it in or drop it")
            texts.append(row[header.index(text_column)])
            fields.append(row)
    except csv.Error as err:
        sys.exit(f"error: {path} line {rows.line_num} is not valid CSV ({err})")
    columns = {name: [row[k].strip() for row in fields] for k, name in enumerate(header)}
    del columns[text_column]
    if labels is None:
        labels = [name for name, values in columns.items() if set(values) <= {"0", "1"}]
        if others := [name for name in columns if name not in labels]:
            print(f"{path.name}: not labels (values other than 0 and 1): {', '.join(others)}")
        print(f"{path.name}: labels (columns of 0s and 1s): {', '.join(labels)}")
        if not labels:
            sys.exit(f"error: {path} has no column of 0s and 1s besides {text_column!r}: no labels")
        for name in labels:
            if len(set(columns[name])) < 2:
                sys.exit(
                    f"error: the label column {name!r} of {path} holds one value only "
                    f"({', '.join(set(columns[name])) or 'no rows'}): nothing to learn it from"
                )
    for name in labels:
        if name not in columns or not set(columns[name]) <= {"0", "1"}:
            sys.exit(f"error: {path}: the label column {name!r} is missing or holds more than 0/1")
    targets = torch.tensor([[int(v) for v in columns[name]] for name in labels]).T.float()
    return (texts, targets.view(len(texts), len(labels))), labels


def split_csv(train, test, seed):
    """(train, validation, test) from --csv's rows: validation a seeded tenth of the training
    rows; without --test-csv, test a seeded fifth of them, first."""
    texts, targets = train
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    test_size = 0 if test else len(texts) // 5
    if test is None:
        print(f"no --test-csv: {test_size} training comments (seeded) are the test set")
    val_size = round(VAL_FRACTION * (len(texts) - test_size))
    if min(val_size, len(texts) - test_size - val_size, len(test[0]) if test else test_size) < 1:
        sys.exit(f"error: {len(texts)} rows are too few for training, validation and test splits")
    parts = order[test_size + val_size :], order[test_size : test_size + val_size]
    splits = [([texts[k] for k in part], targets[part]) for part in parts]
    return [*splits, test or ([texts[k] for k in order[:test_size]], targets[order[:test_size]])]


def read_kaggle_csv(folder, name, columns):
    """{comment id: (text, targets)} from Kaggle's NAME, or from the NAME.zip of its download."""
    path = folder / name if (folder / name).is_file() else folder / f"{name}.zip"
    if not path.is_file():
        sys.exit(
            f"error: no {name} (nor {name}.zip) in {folder}/: with a Kaggle account, accept "
            f"the competition's rules, run `kaggle competitions download -c {JIGSAW_FOLDER}` "
            "and unzip the download there"
        )
    rows, allowed = {}, {"-1", "0", "1"} if name == "test_labels.csv" else {"0", "1"}
    try:
        with contextlib.ExitStack() as files:
            file = files.enter_context(open(path, "rb"))
            if path.suffix == ".zip":
                file = files.enter_context(zipfile.ZipFile(file).open(name))
            # The csv module, not split(","): comments hold commas, quotes and line breaks.
            reader = csv.reader(io.TextIOWrapper(file, encoding="utf-8", newline=""))
            if (header := next(reader, [])) != columns:
                sys.exit(f"error: {path}: columns {header}, expected {columns}")
            # The label columns follow the id and, in train.csv, the comment.
            first_label = 2 if "comment_text" in columns else 1
            for fields in reader:
                values = fields[first_label:]
                if len(fields) != len(columns) or not set(values) <= allowed:
                    what = f"{len(columns)} fields, labels among {sorted(allowed)}"
                    sys.exit(f"error: {path} line {reader.line_num}: expected {what}")
                text = fields[1] if first_label == 2 else None
                rows[fields[0]] = (text, [int(x) for x in values])
    except (OSError, UnicodeDecodeError, csv.Error, zipfile.BadZipFile, KeyError) as err:
        sys.exit(f"error: could not read {path} ({err!r})")
    return rows


def report_labels(labels, share, thresholds, tuned, aucs):
    """Print each label's test figures, worst F1 first; return them as a dict for metrics.json."""
    columns = dict(train_share=share, threshold=thresholds, precision=tuned["precision"])
    columns.update(recall=tuned["recall"], f1=tuned["f1"], auc=aucs)
    order = tuned["f1"].argsort().tolist()
    per_label = {labels[k]: {name: x[k].item() for name, x in columns.items()} for k in order}
    print("         label  train share  threshold  precision  recall     F1    AUC")
    row = "{:>14} {train_share:>12.2%} {threshold:>10.2f} {precision:>10.3f} {recall:>7.3f} "
    for label, figures in per_label.items():
        print((row + "{f1:>6.3f} {auc:>6.3f}").format(label, **figures))
    return per_label


def load_checkpoint(path, device):
    """(model, the checkpoint's dict) saved at `path`, or a one-line error saying what is wrong."""
    if not path.is_file():
        sys.exit(f"error: no checkpoint at {path}: train first (it writes --checkpoint)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        config = saved["config"]
        model = MultilabelLSTM(len(saved["vocab"]), len(saved["labels"]), **config["model"])
        model.load_state_dict(saved["weights"])
        if len(saved["thresholds"]) != len(saved["labels"]) or config["max_len"] < 1:
            raise ValueError("thresholds, labels and config do not match")
    # Empty, truncated, not a torch file, or another script's checkpoint.
    except Exception as err:
        sys.exit(f"error: {path} is not a checkpoint of this script ({err!r})")
    return model.to(device).eval(), saved


def save_plots(history, per_label, out_dir):
    """curves.png: losses, validation macro-F1 and AUC by epoch. labels.png: each label's F1."""
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
    for name in ("val_macro_f1", "val_mean_auc"):
        ax_score.plot(epochs, [h[name] for h in history], marker="o", label=name.replace("_", " "))
    ax_loss.set(xlabel="epoch", ylabel="binary cross-entropy (train: with dropout)")
    ax_score.set(xlabel="epoch", ylim=(0, 1))
    ax_loss.legend()
    ax_score.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)

    names = list(per_label)
    fig, (ax_f1, ax_share) = plt.subplots(1, 2, sharey=True, figsize=(10, 1 + 0.25 * len(names)))
    ax_f1.barh(names, [per_label[name]["f1"] for name in names])
    ax_f1.set(xlabel="test F1 (threshold tuned on the validation split)", xlim=(0, 1))
    shares = [100 * per_label[name]["train_share"] for name in names]
    ax_share.barh(names, shares, color="tab:orange")
    ax_share.set(xlabel="% of the training comments with the label (log scale)", xscale="log")
    fig.savefig(out_dir / "labels.png", dpi=100, bbox_inches="tight")
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
