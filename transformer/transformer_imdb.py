"""Sentiment of movie reviews with a Transformer encoder, written out: attention instead of an LSTM.

Model:  word embedding + learned position embedding (d_model 64) for a [CLS] token followed by
        the review -> 2 pre-LayerNorm encoder blocks (4-head self-attention, GELU feed-forward
        of 256, dropout 0.3) -> the [CLS] token's output -> linear to 2 classes. AdamW, linear
        warm-up then cosine decay, gradient clipping; what is evaluated and saved is a moving
        average of the weights (EMA). Small on purpose: on a 2-core CPU, 8 heads or a width of
        128 gave no clearly better accuracy here and cost time on every step. 2 epochs: in a
        third, the validation loss rose for every seed tried.
Data:   IMDB, exactly as RNN/lstm_imdb.py reads it: the same tokeniser, vocabulary (from the
        training split only), validation split, length bucketing and --predict. The accuracy
        difference between the two scripts is the model's.
Expect: about 0.88 test accuracy after the default 2 epochs (seeds 0/1/2: 0.883, 0.881, 0.879;
        the LSTM gets 0.899), in about 2 minutes on a 2-core CPU, under half of
        RNN/lstm_imdb.py's time (README).

Run:
    python transformer/transformer_imdb.py             # train; writes OUT_DIR/model.pt
    python transformer/transformer_imdb.py --dry-run   # one tiny batch: checks the set-up
    python transformer/transformer_imdb.py --help      # every setting
    python transformer/transformer_imdb.py --predict "A wonderful film." --predict "Far too long."
    echo "One review per line" | python transformer/transformer_imdb.py --predict -

Writes model.pt (weights, vocabulary, settings), metrics.json, curves.png and attention.png (which
words the [CLS] token looked at in one test review) into --out-dir.
"""

import argparse
import contextlib
import copy
import json
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; works without a display (servers, CI)
import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torchvision.datasets.utils import check_integrity, download_and_extract_archive
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# Inside this repository all scripts share its top-level data/ and runs/ (the folder holding
# data/README.md); a copy of this script anywhere else keeps both in its own folder.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
MD5 = "7c2ac02c03563afcf9b574c7e56c153a"
LABELS = ("negative", "positive")
PAD, UNK, CLS = 0, 1, 2  # vocabulary indices of "<pad>", "<unk>" and "<cls>"
PAD_TO = 32  # batches are padded to a multiple of this length (see SentimentTransformer)

# ---- the text pipeline (what torchtext's Field and BucketIterator used to do) ----

TOKEN = re.compile(
    r"[a-z0-9]+|[^\sa-z0-9]"
)  # a run of letters/digits, or any other visible character


def tokenize(text):
    """Lower-case, drop the <br /> line breaks of the IMDB files, split words and punctuation."""
    return TOKEN.findall(text.lower().replace("<br />", " "))


def build_vocab(token_lists, min_freq, max_size):
    """Words of the training reviews, most frequent first: 0 is <pad>, 1 <unk>, 2 <cls>."""
    counts = Counter(token for tokens in token_lists for token in tokens)
    words = [word for word, count in counts.most_common() if count >= min_freq]
    return ["<pad>", "<unk>", "<cls>"] + words[: max(max_size - 3, 0)]


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


# ---- the model ----


class SelfAttention(nn.Module):
    """Multi-head self-attention: every position gathers information from every real position."""

    def __init__(self, d_model, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)  # queries, keys and values in one product
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x, keep, queries=None, cls_weights=False):
        """x (batch, time, d_model), keep (batch, time) True at real tokens; outputs for the
        first `queries` positions (default all), and optionally [CLS]'s attention weights."""
        batch, time, d_model = x.shape
        # Split d_model into heads: each head attends in its own smaller space, so different
        # heads can look for different things (a negation, a verdict, a name).
        q, k, v = self.qkv(x).view(batch, time, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = q[:, :, :queries]  # (batch, heads, queries, d_head)
        # softmax(q k^T / sqrt(d_head)) v. Dividing by sqrt(d_head) keeps the scores near unit
        # size whatever the head width, so the softmax does not saturate at the start. The mask
        # (batch, 1, 1, time) hides padding from every query: a review's result cannot depend on
        # how long the other reviews in its batch are. No dropout on the attention weights:
        # on a CPU it leaves PyTorch's fused kernel and doubles the time of an epoch.
        mask = keep[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.out(y.transpose(1, 2).reshape(batch, q.size(2), d_model))
        if not cls_weights:
            return y, None
        # For looking, not training: the [CLS] query's weights, written out, averaged over heads.
        scores = (q[:, :, :1] @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        weights = scores.float().masked_fill(~mask, float("-inf")).softmax(-1)
        return y, weights.mean(1)[:, 0]  # (batch, time)


class Block(nn.Module):
    """Pre-LayerNorm encoder block: x + attention(norm(x)), then x + feed-forward(norm(x)).

    Normalising the input of each branch (not the sum, as the original Transformer did) leaves a
    clean residual path from the output back to the embeddings: it trains stably without a
    carefully tuned warm-up, and deeper stacks still train.
    """

    def __init__(self, d_model, heads, d_ff, dropout):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model, heads)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model)
        )  # the same small network applied to each position on its own
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, keep, cls_only=False):
        """With cls_only, the output of the [CLS] position only, and its attention weights."""
        normed = self.norm1(x)
        # After the last block only [CLS] is read: every word still serves as a key and a value,
        # but none needs an output of its own. Skipping those saves most of the block's work
        # (the time x time attention, the output projection and the feed-forward).
        x = x[:, :1] if cls_only else x
        attended, weights = self.attention(normed, keep, x.size(1), cls_weights=cls_only)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.feed_forward(self.norm2(x)))
        return x, weights


class SentimentTransformer(nn.Module):
    def __init__(self, vocab_size, max_len, d_model=64, heads=4, layers=2, d_ff=256, dropout=0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        # Attention itself ignores order ("dog bites man" = "man bites dog"): a learned vector
        # per position, added to each word's, tells the model where each word is.
        self.position = nn.Embedding(round_up(max_len + 1), d_model)  # + 1 for [CLS]
        self.blocks = nn.ModuleList(Block(d_model, heads, d_ff, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)  # pre-norm blocks leave the last sum unnormalised
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, 2)
        # Small starting embeddings (nn.Embedding draws from N(0, 1)): Adam moves every entry
        # by about the learning rate per step, so words and positions then learn in a few
        # hundred steps instead of barely moving from their random start.
        for table in (self.embedding, self.position):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, tokens, lengths, cls_weights=False):
        """Logits (batch, 2); with cls_weights, also the last block's [CLS] attention (batch,
        1 + time), averaged over heads, the [CLS] token itself first."""
        # A [CLS] token in front of every review: it has no word of its own, so its output is
        # free to become a summary of the review, learned for the task.
        cls = torch.full_like(tokens[:, :1], CLS)
        tokens = torch.cat([cls, tokens], 1)
        # Round the length up to a multiple of PAD_TO with more padding. On a CPU every new
        # shape gets its own kernel set-up, kept in a cache, and memory fragments: with a
        # different length in every batch, one run grew to 8.4 GB. A few shapes keep it flat.
        tokens = F.pad(tokens, (0, round_up(tokens.size(1)) - tokens.size(1)), value=PAD)
        positions = torch.arange(tokens.size(1), device=tokens.device)
        keep = positions < (lengths.to(tokens.device) + 1)[:, None]  # real tokens and [CLS]
        x = self.dropout(self.embedding(tokens) + self.position(positions))
        for block in self.blocks:
            x, weights = block(x, keep, cls_only=block is self.blocks[-1])
        logits = self.out(self.norm(x[:, 0]))
        return (logits, weights) if cls_weights else logits


def round_up(length):
    return -(-length // PAD_TO) * PAD_TO


# ---- training and evaluation ----


def train_one_epoch(
    model, average, data, optimizer, schedule, scaler, autocast, args, device, generator
):
    """One pass over the training set: (mean loss, accuracy on the batches as they were trained).
    After every step, `average` moves a little towards the model's new weights."""
    model.train()
    total_loss = correct = 0
    steps = math.ceil(len(data[0]) / args.batch_size)
    # disable=None: no progress bar when the output is not a terminal (a log file, CI).
    for tokens, lengths, labels in tqdm(
        batches(*data, args.batch_size, generator), total=steps, disable=None
    ):
        tokens, labels = tokens.to(device), labels.to(device)
        with autocast:
            logits = model(tokens, lengths)
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # fp16 only: the loss is scaled up so small gradients survive
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # one odd batch cannot wreck the weights
        scaler.step(optimizer)  # (skips the step if any gradient overflowed)
        scaler.update()
        schedule.step()  # the learning rate changes every step, not every epoch
        update_average(average, model, args.ema)
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
    return total_loss / len(data[0]), correct / len(data[0])


@torch.no_grad()  # no gradients needed: faster and lighter
def evaluate(model, data, autocast, device, batch_size=256):
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


@torch.no_grad()
def update_average(average, model, decay):
    """average = decay * average + (1 - decay) * model, weight by weight (an exponential moving
    average, EMA). Each step's weights are a noisy sample around a good solution, and the average
    of the last few hundred steps sits nearer its centre: here it did better on new reviews than
    the last step's weights (README). (decay 0 copies the model: no averaging.)"""
    for averaged, weight in zip(average.parameters(), model.parameters()):
        averaged.lerp_(weight, 1 - decay)


def warmup_cosine(warmup_steps, total_steps):
    """Learning-rate factor per step: linear warm-up from 0, then a cosine decay to 0.

    Early on, Adam's estimates of the gradient's size are poor and attention is still random:
    small steps then, large steps once it has its bearings, and small again to settle.
    """

    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@torch.no_grad()
def classify(model, tokens, index, max_len, device):
    """(label, probability, [CLS] attention per token) of one tokenised review."""
    tokens = tokens[-max_len:]
    sequence = encode(tokens, index, max_len)
    logits, weights = model(sequence.unsqueeze(0).to(device), torch.tensor([len(tokens)]), True)
    probabilities = logits.float().softmax(1)[0]
    label = probabilities.argmax().item()
    return label, probabilities[label].item(), weights[0, 1 : len(tokens) + 1].tolist()  # no [CLS]


def predict(texts, checkpoint, device):
    """Print the label, its probability and the five most attended words of each text."""
    model, vocab, hyperparameters = load_checkpoint(checkpoint, device)
    index = {word: i for i, word in enumerate(vocab)}
    for text in texts:
        tokens = tokenize(text)
        if not tokens:
            fail(f"nothing to classify in {text!r}: give --predict some words")
        max_len = hyperparameters["max_len"]
        label, probability, weights = classify(model, tokens, index, max_len, device)
        top = sorted(range(len(weights)), key=lambda i: -weights[i])[:5]
        words = ", ".join(tokens[-max_len:][i] for i in top)
        shown = text[:60] + ("..." if len(text) > 60 else "")
        print(f"{LABELS[label]:8s} {probability:.3f}  {shown}  [attended: {words}]")


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)  # the initial weights and dropout
    device, device_why = pick_device(args.device)
    checkpoint = args.checkpoint or args.out_dir / "model.pt"
    if args.predict:
        return predict(read_texts(args.predict), checkpoint, device)
    precision, precision_why = pick_precision(args.precision, device)
    print(f"device: {device} ({device_why}); precision: {precision} ({precision_why})")
    autocast = autocast_for(device, precision)

    train_texts, train_labels, test_texts, test_labels = load_imdb(
        args.data_dir, args.dry_run, args.seed
    )
    if not 0 < args.val_size < len(train_texts):
        fail(
            f"--val-size must be between 1 and {len(train_texts) - 1} ({len(train_texts)} reviews)"
        )
    order = torch.randperm(len(train_texts), generator=torch.Generator().manual_seed(args.seed))
    val_ids, train_ids = order[: args.val_size].tolist(), order[args.val_size :].tolist()

    train_tokens = [tokenize(train_texts[k]) for k in train_ids]
    vocab = build_vocab(train_tokens, args.min_freq, args.max_vocab)  # from the training split only
    index = {word: i for i, word in enumerate(vocab)}
    train_data = (
        [encode(tokens, index, args.max_len) for tokens in train_tokens],
        train_labels[train_ids],
    )
    val_tokens = [tokenize(train_texts[k]) for k in val_ids]
    val_data = [encode(tokens, index, args.max_len) for tokens in val_tokens], train_labels[val_ids]
    test_data = [encode(tokenize(text), index, args.max_len) for text in test_texts], test_labels
    print(
        f"data: {len(train_ids)} training, {len(val_ids)} validation and {len(test_texts)} test "
        f"reviews; vocabulary of {len(vocab)} words"
    )

    sizes = dict(d_model=args.d_model, heads=args.heads, layers=args.layers, d_ff=4 * args.d_model)
    hyperparameters = dict(model=dict(**sizes, dropout=args.dropout), max_len=args.max_len)
    model = SentimentTransformer(len(vocab), args.max_len, **hyperparameters["model"]).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    # AdamW: Adam with weight decay applied to the weights directly (not through the gradient,
    # where Adam's scaling would undo it), here to the weight matrices and the position table;
    # not to biases, LayerNorms or the word embeddings (rare words would shrink between updates).
    matrices = {n for n, p in model.named_parameters() if p.dim() == 2 and n != "embedding.weight"}
    decayed = [p for n, p in model.named_parameters() if n in matrices]
    others = [p for n, p in model.named_parameters() if n not in matrices]
    optimizer = torch.optim.AdamW(
        [dict(params=decayed, weight_decay=args.weight_decay), dict(params=others, weight_decay=0)],
        lr=args.lr,
    )
    total_steps = args.epochs * math.ceil(len(train_ids) / args.batch_size)
    warmup = warmup_cosine(max(total_steps // 10, 1), total_steps)  # 10% of the steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
    # fp16 keeps too few exponent bits for small gradients: GradScaler scales the loss up before
    # backward and the gradients down before the step. With bf16 or fp32 it does nothing.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    generator = torch.Generator().manual_seed(args.seed)  # batch order

    # The weight average starts from the starting weights: those still weigh decay**steps at the
    # end (about a quarter with the defaults), a pull back towards small weights that helps too.
    average = copy.deepcopy(model).requires_grad_(False)

    history, best_val_loss = [], float("inf")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model,
            average,
            train_data,
            optimizer,
            schedule,
            scaler,
            autocast,
            args,
            device,
            generator,
        )
        seconds = time.perf_counter() - start
        # the average, not the model's last weights, is what is judged, kept and saved
        val_loss, val_acc = evaluate(average, val_data, autocast, device)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc))
        history[-1].update(val_loss=val_loss, val_accuracy=val_acc, seconds=seconds)
        # keep the epoch that did best on reviews it never trained on
        saved = val_loss < best_val_loss
        if saved:
            best_val_loss = val_loss
            save_checkpoint(average, vocab, hyperparameters, checkpoint)
        print(epoch_line(history[-1]) + ("  (saved best)" if saved else ""))

    model, _, _ = load_checkpoint(checkpoint, device)  # the best epoch, not the last
    test_loss, test_acc = evaluate(model, test_data, autocast, device)
    print(
        f"test loss {test_loss:.4f}  test acc {test_acc:.4f}  (best checkpoint, test set used once)"
    )
    save_plots(history, args.out_dir)
    save_attention_plot(model, test_texts, test_data, index, args.max_len, device, args.out_dir)
    results = dict(test_loss=test_loss, test_accuracy=test_acc, vocab_size=len(vocab))
    write_metrics(args, device, precision, history, parameters=parameters, **results)


# ------------------------------------------------------------------------------------------
# Plumbing: flags, errors, device and precision, download, checkpoints, plots. The lesson is above.
# ------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=2, help="passes over the training set (default 2)")
    add("--batch-size", type=positive(int), default=64, help="reviews per step (default 64)")
    add("--lr", type=positive(float), default=2e-3, help="peak AdamW learning rate (default 2e-3)")
    add("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    add(
        "--ema",
        type=float,
        default=0.998,
        help="decay of the moving average of the weights that is evaluated and saved "
        "(default 0.998: about the last 500 steps; 0: the last weights, no averaging)",
    )
    add(
        "--d-model",
        type=positive(int),
        default=64,
        help="width of every token's vector (default 64)",
    )
    add(
        "--heads",
        type=positive(int),
        default=4,
        help="attention heads; divide --d-model (default 4)",
    )
    add("--layers", type=positive(int), default=2, help="encoder blocks (default 2)")
    add(
        "--dropout",
        type=float,
        default=0.3,
        help="dropout on embeddings and residual branches (default 0.3)",
    )
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
        help="vocabulary size, <pad>, <unk> and <cls> included (default 10000)",
    )
    add(
        "--val-size",
        type=positive(int),
        default=2500,
        help="training reviews held out for validation (default 2500)",
    )
    add(
        "--checkpoint",
        type=Path,
        help="checkpoint to write, or to read with --predict (default: OUT_DIR/model.pt)",
    )
    add(
        "--predict",
        action="append",
        metavar="TEXT",
        help="classify TEXT with the saved checkpoint instead of training (repeatable); "
        "'--predict -' alone reads one text per line from standard input",
    )
    add_common_flags(p, data="aclImdb/")
    args = p.parse_args(argv)
    if args.d_model % args.heads:
        p.error(f"argument --heads: {args.heads} does not divide --d-model {args.d_model}")
    if not 0 <= args.dropout < 1:
        p.error(f"argument --dropout: must be in [0, 1), got {args.dropout}")
    if not 0 <= args.ema < 1:
        p.error(f"argument --ema: must be in [0, 1), got {args.ema}")
    if args.dry_run:  # one tiny batch through training and evaluation
        args.epochs, args.batch_size, args.val_size, args.min_freq = 1, 8, 8, 1
    return args


def read_texts(predict_args):
    """The texts given to --predict; '-' alone means one text per line of standard input."""
    if predict_args != ["-"]:
        return predict_args
    texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        fail("--predict - read no text from standard input: give one review per line")
    return texts


def load_imdb(data_dir, dry_run, seed):
    """Training and test (texts, labels); for --dry-run, a few of each."""
    folder = get_imdb(data_dir)
    train_texts, train_labels = read_reviews(folder, "train")
    test_texts, test_labels = read_reviews(folder, "test")
    if dry_run:
        keep = torch.randperm(len(train_texts), generator=torch.Generator().manual_seed(seed))[:24]
        train_texts, train_labels = [train_texts[k] for k in keep], train_labels[keep]
        step = max(
            len(test_texts) // 16, 1
        )  # a few of each label (the files are sorted neg, then pos)
        test_texts, test_labels = test_texts[::step], test_labels[::step]
    return train_texts, train_labels, test_texts, test_labels


def get_imdb(data_dir):
    """The aclImdb/ folder under data_dir: used as it is if there, else downloaded and unpacked."""
    folder = data_dir / "aclImdb"
    if folder.is_dir():
        return folder
    archive = data_dir / Path(URL).name
    if archive.exists() and not check_integrity(str(archive), MD5):
        fail(f"{archive} failed its MD5 check (corrupt or partial download): delete it, run again")
    # No network, a broken connection, a download failing its MD5 check:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(URL, str(data_dir), md5=MD5)
    except (OSError, RuntimeError) as err:
        fail(
            f"could not get IMDB ({first_line(err)}). Download {URL} by hand and put it in "
            f"{data_dir}/ (or unpack it there, giving {folder}/)"
        )
    return folder


def read_reviews(folder, split):
    """Texts and labels (0 negative, 1 positive) of aclImdb/SPLIT/{neg,pos}/*.txt, by file name."""
    texts, labels = [], []
    for label, name in enumerate(("neg", "pos")):
        files = sorted((folder / split / name).glob("*.txt"))
        if not files:
            fail(f"no reviews in {folder / split / name}/: is {folder} a complete copy of aclImdb?")
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                fail(f"could not read the review {path} ({type(err).__name__}): replace it")
            if not text.strip():
                fail(f"the review {path} is empty: replace it from the archive")
            texts.append(text)
            labels.append(label)
    return texts, torch.tensor(labels)


def save_checkpoint(model, vocab, hyperparameters, path):
    # Only tensors, strings and numbers: loadable with torch.load(weights_only=True), which
    # refuses to run code hidden in a file (unlike a pickled model object).
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": model.state_dict(), "vocab": vocab, "hyperparameters": hyperparameters}, path
    )


def load_checkpoint(path, device):
    """(model, vocabulary, settings) saved at `path`, or a one-line error saying what is wrong."""
    if not path.is_file():
        fail(f"no checkpoint at {path}: train first (it is written to OUT_DIR/model.pt)")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        hyperparameters = checkpoint["hyperparameters"]
        model = SentimentTransformer(
            len(checkpoint["vocab"]), hyperparameters["max_len"], **hyperparameters["model"]
        ).to(device)
        model.load_state_dict(checkpoint["model"])
    except Exception as err:  # empty, truncated, not a torch file, or another script's checkpoint
        fail(f"{path} is not a checkpoint of this script ({first_line(err)})")
    return model.eval(), checkpoint["vocab"], hyperparameters


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch, training and validation."""
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: during the epoch, with dropout)")
    ax_loss.legend(), ax_acc.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def save_attention_plot(model, test_texts, test_data, index, max_len, device, out_dir):
    """attention.png: a short test review, each word shaded by the [CLS] token's attention to it
    (last block, averaged over heads), with the prediction and the true label in the title."""
    sequences, labels = test_data
    # the shortest test review of at least 40 tokens (or the longest, in a tiny --dry-run set)
    k = min(range(len(sequences)), key=lambda i: (len(sequences[i]) < 40, len(sequences[i])))
    if len(sequences[k]) < 40:
        k = max(range(len(sequences)), key=lambda i: len(sequences[i]))
    tokens = tokenize(test_texts[k])[-max_len:]
    label, probability, weights = classify(model, tokens, index, max_len, device)
    width = 80  # characters per line
    lines = 1 + len(" ".join(tokens)) // (width - 10)
    fig, ax = plt.subplots(figsize=(width * 0.1, 0.9 + 0.3 * lines))
    ax.set_axis_off()
    ax.set(xlim=(0, width), ylim=(lines + 0.5, -0.5))
    x = y = 0
    for word, weight in zip(tokens, weights):
        if x + len(word) > width:
            x, y = 0, y + 1
        shade = plt.cm.Reds(0.85 * weight / max(weights))
        box = dict(facecolor=shade, edgecolor="none", pad=1.5)
        ax.text(x, y, word, family="monospace", fontsize=10, va="center", bbox=box)
        x += len(word) + 1
    ax.set_title(
        f"predicted {LABELS[label]} ({probability:.2f}), true label {LABELS[labels[k]]}\n"
        "darker: more attention from [CLS] (last block, mean over heads)"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "attention.png", dpi=100, bbox_inches="tight")
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
