"""Sentiment of movie reviews with a Transformer encoder, written out: attention instead of an LSTM.

Model:  word embedding + learned position embedding (d_model 64) for a [CLS] token followed by
        the review -> 2 pre-LayerNorm encoder blocks (4-head self-attention, GELU feed-forward
        of 256, dropout 0.3) -> the [CLS] token's output -> linear to 2 classes. AdamW, linear
        warm-up then cosine decay, gradient clipping; what is evaluated and saved is a moving
        average of the weights (EMA). Small on purpose: on a 2-core CPU, 8 heads or a width of
        128 gave no clearly better accuracy here and cost time on every step. 2 epochs: in a
        third epoch the validation loss rose (seeds 0, 1 and 2).
Data:   IMDB, read with RNN/lstm_imdb.py's tokeniser, length bucketing and --predict; its
        vocabulary also comes from the training split only, but holds <cls> and words seen 10
        times or more (--min-freq), and the validation split has a fixed size. The training
        recipe differs too (batch size, AdamW, schedule, weight average, epochs), so the
        accuracy difference between the two scripts is not the model's alone.
Expect: about 0.88 test accuracy after the default 2 epochs (the LSTM gets about 0.89), in
        2-4 minutes on a 2-core CPU, under half of RNN/lstm_imdb.py's time
        (benchmarks/README.md).

Run:
    python transformer/transformer_imdb.py             # train; writes OUT_DIR/model.pt
    python transformer/transformer_imdb.py --dry-run   # a tiny run: checks the set-up
    python transformer/transformer_imdb.py --help      # every flag
    python transformer/transformer_imdb.py --predict "A wonderful film." --predict "Far too long."
    echo "One review per line" | python transformer/transformer_imdb.py --predict -

Writes model.pt (the best epoch's averaged weights, vocabulary, settings), metrics.json,
curves.png and attention.png (which words each head's [CLS] query looked at in one test review)
into --out-dir. To use the trained model (tokenize and encode as below):
    checkpoint = torch.load("runs/transformer_imdb/model.pt", weights_only=True)
    config = checkpoint["config"]
    model = SentimentTransformer(len(checkpoint["vocab"]), config["max_len"], **config["model"])
    model.load_state_dict(checkpoint["weights"])
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
# Vocabulary indices of "<pad>", "<unk>" and "<cls>".
PAD, UNK, CLS = 0, 1, 2
# Batches are padded to a multiple of this length (see SentimentTransformer).
PAD_TO = 32

# ---- the text pipeline (what torchtext's Field and BucketIterator used to do) ----

# A token: a run of letters and digits, or any other visible character.
TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


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
    batch_ids = []
    for start in range(0, len(sequences), pool):
        by_length = sorted(order[start : start + pool], key=lambda k: len(sequences[k]))
        batch_ids += [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    if generator:
        batch_ids = [batch_ids[k] for k in torch.randperm(len(batch_ids), generator=generator)]
    for ids in batch_ids:
        lengths = torch.tensor([len(sequences[k]) for k in ids])
        padded = pad_sequence([sequences[k] for k in ids], batch_first=True, padding_value=PAD)
        yield padded, lengths, labels[ids]


# ---- the model ----


class SelfAttention(nn.Module):
    """Multi-head self-attention: every position gathers information from every real position."""

    def __init__(self, d_model, heads):
        super().__init__()
        self.heads = heads
        # Queries, keys and values in one product.
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x, keep, queries=None, cls_attention=False):
        """x (batch, time, d_model), keep (batch, time) True at real tokens; outputs for the
        first `queries` positions (default all), and optionally the [CLS] query's attention
        weights in each head (batch, heads, time)."""
        batch, length, d_model = x.shape
        # Split d_model into heads: each head attends in its own smaller space, so different
        # heads can look for different things (a negation, a verdict, a name). The product is
        # (batch, length, 3 * d_model), viewed as (batch, length, 3, heads, d_head) and permuted
        # to (3, batch, heads, length, d_head): q, k and v, each (batch, heads, length, d_head).
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        # Only the first `queries` positions ask: (batch, heads, queries, d_head).
        q = q[:, :, :queries]
        # softmax(q k^T / sqrt(d_head)) v. Dividing by sqrt(d_head) keeps the scores near unit
        # size whatever the head width, so the softmax does not saturate at the start. The mask
        # (batch, 1, 1, time) hides padding from every query: a review's result cannot depend on
        # how long the other reviews in its batch are. No dropout on the attention weights:
        # on a CPU it leaves PyTorch's fused kernel and doubles the time of an epoch.
        mask = keep[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.out(y.transpose(1, 2).reshape(batch, q.size(2), d_model))
        if not cls_attention:
            return y, None
        # For looking, not training: the [CLS] query's weights in each head, written out.
        scores = (q[:, :, :1] @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        probabilities = scores.float().masked_fill(~mask, float("-inf")).softmax(-1)
        return y, probabilities[:, :, 0]


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
        # The same small network, applied to each position on its own.
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, keep, cls_only=False, cls_attention=False):
        """With cls_only, the output of the [CLS] position only; with cls_attention, also the
        [CLS] query's attention weights in each head."""
        normed = self.norm1(x)
        # After the last block only [CLS] is read: every word still serves as a key and a value,
        # but none needs an output of its own. Skipping those saves most of the block's work
        # (the time x time attention, the output projection and the feed-forward).
        x = x[:, :1] if cls_only else x
        attended, cls_map = self.attention(normed, keep, x.size(1), cls_attention=cls_attention)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.feed_forward(self.norm2(x)))
        return x, cls_map


class SentimentTransformer(nn.Module):
    def __init__(self, vocab_size, max_len, d_model=64, heads=4, layers=2, d_ff=256, dropout=0.3):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        # Attention itself ignores order ("dog bites man" = "man bites dog"): a learned vector
        # per position, added to each word's, tells the model where each word is.
        # (+ 1 for [CLS].)
        self.position = nn.Embedding(round_up(max_len + 1), d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, d_ff, dropout) for _ in range(layers))
        # Pre-norm blocks leave the last sum unnormalised.
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, 2)
        # Small starting embeddings (nn.Embedding draws from N(0, 1)): Adam moves every entry
        # by about the learning rate per step, so words and positions then learn in a few
        # hundred steps instead of barely moving from their random start.
        for table in (self.embedding, self.position):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, tokens, lengths, cls_attention=False):
        """Logits (batch, 2); with cls_attention, also every block's [CLS] attention weights, each
        (batch, heads, padded time), the [CLS] token itself first."""
        # A [CLS] token in front of every review: it has no word of its own, so its output is
        # free to become a summary of the review, learned for the task.
        cls = torch.full_like(tokens[:, :1], CLS)
        tokens = torch.cat([cls, tokens], 1)
        # Round the length up to a multiple of PAD_TO with more padding. On a CPU every new
        # shape gets its own kernel set-up, kept in a cache, and memory fragments: with a
        # different length in every batch, memory grows past 8 GB. A few shapes keep it flat.
        tokens = F.pad(tokens, (0, round_up(tokens.size(1)) - tokens.size(1)), value=PAD)
        positions = torch.arange(tokens.size(1), device=tokens.device)
        # True at the real tokens and [CLS].
        keep = positions < (lengths.to(tokens.device) + 1)[:, None]
        x = self.dropout(self.embedding(tokens) + self.position(positions))
        cls_maps = []
        for block in self.blocks:
            cls_only = block is self.blocks[-1]
            x, cls_map = block(x, keep, cls_only=cls_only, cls_attention=cls_attention)
            cls_maps.append(cls_map)
        logits = self.out(self.norm(x[:, 0]))
        return (logits, cls_maps) if cls_attention else logits


def round_up(length):
    """The smallest multiple of PAD_TO that is at least `length` (-(-a // b): a / b rounded up)."""
    return -(-length // PAD_TO) * PAD_TO


# ---- training and evaluation ----


def train_one_epoch(model, loader, optimizer, amp, after_step):
    """One pass over the training `loader`: its accuracy and mean loss, as trained.
    after_step() runs after every optimiser step (the schedule, the weight average)."""
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
        # Clipping the gradients' norm to 1: one odd batch cannot wreck the weights.
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        after_step()
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


@torch.no_grad()
def update_average(average, model, decay):
    """average = decay * average + (1 - decay) * model, weight by weight (an exponential moving
    average, EMA): the weights of k steps ago weigh (1 - decay) * decay**k, so the average
    reaches about 1 / (1 - decay) steps back. Each step's weights are a noisy sample around a
    good solution, and their average sits nearer its centre. (decay 0 copies the model.)"""
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
    """(label, probability, cls_maps) of one tokenised review: the attention of the [CLS]
    query to each of its tokens, (blocks, heads, tokens)."""
    tokens = tokens[-max_len:]
    sequence = encode(tokens, index, max_len)
    lengths = torch.tensor([len(tokens)])
    logits, per_block = model(sequence.unsqueeze(0).to(device), lengths, cls_attention=True)
    probabilities = logits.float().softmax(1)[0]
    label = probabilities.argmax().item()
    # Drop [CLS] itself and the padding.
    cls_maps = torch.stack([a[0, :, 1 : len(tokens) + 1] for a in per_block]).cpu()
    return label, probabilities[label].item(), cls_maps


def predict(texts, model_path, device):
    """Print the label, its probability and the five words of each text that the first block's
    heads attend to most (its attention is sharp; the last block's is spread over the review)."""
    model, vocab, config = load_checkpoint(model_path, device)
    index = {word: i for i, word in enumerate(vocab)}
    for text in texts:
        tokens = tokenize(text)
        if not tokens:
            sys.exit(f"error: nothing to classify in {text!r}: give --predict some words")
        tokens = tokens[-config["max_len"] :]
        label, probability, cls_maps = classify(model, tokens, index, config["max_len"], device)
        # A word's score: the most attention any head of the first block gives it.
        top = cls_maps[0].max(0).values.argsort(descending=True)[:5].tolist()
        words = ", ".join(tokens[i] for i in top)
        shown = text[:60] + ("..." if len(text) > 60 else "")
        print(f"{CLASSES[label]:8s} {probability:.3f}  {shown}  [attended: {words}]")


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same split, weights, dropout and batch order: the same result on the same
    # CPU (GPU runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args)
    model_path = args.checkpoint or args.out_dir / "model.pt"
    if args.predict:
        return predict(read_texts(args.predict), model_path, args.device)
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

    sizes = dict(d_model=args.d_model, heads=args.heads, layers=args.layers, d_ff=4 * args.d_model)
    config = dict(model=dict(**sizes, dropout=args.dropout), max_len=args.max_len)
    model = SentimentTransformer(len(vocab), args.max_len, **config["model"]).to(args.device)
    parameters = sum(p.numel() for p in model.parameters())
    # AdamW: Adam with weight decay applied to the weights directly (not through the gradient,
    # where Adam's scaling would undo it), here to the weight matrices and the position table;
    # not to biases, LayerNorms or the word embeddings (rare words would shrink between updates).
    matrices = {n for n, p in model.named_parameters() if p.dim() == 2 and n != "embedding.weight"}
    decayed = [p for n, p in model.named_parameters() if n in matrices]
    others = [p for n, p in model.named_parameters() if n not in matrices]
    groups = [dict(params=decayed, weight_decay=args.weight_decay), dict(params=others)]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0)
    steps = math.ceil(len(train_ids) / args.batch_size)
    # 10% of the steps warm up.
    warmup_steps = max(args.epochs * steps // 10, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(warmup_steps, args.epochs * steps)
    )
    generator = torch.Generator().manual_seed(args.seed)
    # The weight average starts from the random starting weights, which keep a share of
    # decay**steps in it: 0.998**704, about a quarter, in the model saved after the default 2
    # epochs (about half in the one judged after epoch 1). Starting it at the end of the warm-up
    # instead gave a lower test accuracy with seed 0; with seeds 0, 1 and 2 the average beat no
    # average (--ema 0) by 0.3 to 1.2 points (transformer/README.md).
    average = copy.deepcopy(model).requires_grad_(False)

    def after_step():
        # The learning rate changes every step, not every epoch; the average follows the model.
        schedule.step()
        update_average(average, model, args.ema)

    history, best_val_loss = [], float("inf")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        # disable=None: a progress bar on a terminal only, not in a log file.
        progress = tqdm(batches(*train_data, args.batch_size, generator), total=steps, disable=None)
        train_figures = train_one_epoch(model, progress, optimizer, (autocast, scaler), after_step)
        seconds = time.perf_counter() - start
        # The average, not the model's last weights, is what is judged, kept and saved.
        val_figures = evaluate(average, batches(*val_data, 256), autocast, "val")
        log_epoch(history, epoch=epoch, **train_figures, **val_figures, seconds=seconds)
        # Keep the epoch that did best on reviews it never trained on.
        if val_figures["val_loss"] < best_val_loss:
            best_val_loss = val_figures["val_loss"]
            save_checkpoint(average, vocab, config, model_path)
            print(f"saved epoch {epoch} to {model_path}: its validation loss is the lowest yet")

    # The best epoch, not the last, measured once on the test set.
    model, _, _ = load_checkpoint(model_path, args.device)
    test_figures = evaluate(model, batches(*test_data, 256), autocast, "test")
    write_metrics(args, history, **test_figures, vocab_size=len(vocab), parameters=parameters)
    save_plots(history, args.out_dir)
    save_attention_plot(model, test_texts, test_data, index, args.max_len, args.out_dir)


# ---- plumbing: flags, data, checkpoints, plots (the lesson is above) ----


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
        help="decay of the weight average that is evaluated and saved: each step moves it "
        "(1 - decay) of the way to the model's weights (default 0.998; 0: no averaging)",
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
    training = "epochs batch_size lr weight_decay ema d_model heads".split()
    training += "layers dropout max_len min_freq max_vocab val_size".split()
    if args.predict and any(getattr(args, f) != p.get_default(f) for f in training):
        p.error("--predict uses the checkpoint's settings: drop the training flags")
    if args.d_model % args.heads:
        p.error(f"argument --heads: {args.heads} does not divide --d-model {args.d_model}")
    if not 0 <= args.dropout < 1:
        p.error(f"argument --dropout: must be in [0, 1), got {args.dropout}")
    if not 0 <= args.ema < 1:
        p.error(f"argument --ema: must be in [0, 1), got {args.ema}")
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
        vocab_size, max_len = len(checkpoint["vocab"]), config["max_len"]
        model = SentimentTransformer(vocab_size, max_len, **config["model"]).to(device)
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


def save_attention_plot(model, test_texts, test_data, index, max_len, out_dir):
    """attention.png: for a short test review, how much attention the [CLS] query of each head
    of each block gives to each word. Each row has its own colour scale (white: that head's
    least attended word, dark red: its most), so a flat row shows as noise, a sharp one as a few
    dark words; the number at the right is the row's largest weight."""
    sequences, labels = test_data
    # The shortest test review of at least 40 tokens (or the longest, in a tiny --dry-run set).
    k = min(range(len(sequences)), key=lambda i: (len(sequences[i]) < 40, len(sequences[i])))
    tokens = tokenize(test_texts[k])[-max_len:]
    device = next(model.parameters()).device
    label, probability, cls_maps = classify(model, tokens, index, max_len, device)
    rows = cls_maps.flatten(0, 1)
    low, high = rows.min(1, keepdim=True).values, rows.max(1, keepdim=True).values
    scaled = (rows - low) / (high - low).clamp(min=1e-9)
    fig, ax = plt.subplots(figsize=(0.28 * len(tokens) + 2, 0.4 * len(rows) + 1.6))
    ax.imshow(scaled.numpy(), cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    blocks, heads = cls_maps.shape[:2]
    names = [f"block {b + 1}, head {h + 1}" for b in range(blocks) for h in range(heads)]
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    for row, peak in enumerate(high.squeeze(1).tolist()):
        ax.text(len(tokens) - 0.3, row, f" max {peak:.2f}", va="center", fontsize=8)
    ax.set_title(
        f"predicted {CLASSES[label]} ({probability:.2f}), true {CLASSES[labels[k]]}. [CLS]"
        f" attention to each word; uniform would be {1 / (len(tokens) + 1):.3f}; rows scaled to"
        " their max"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "attention.png", dpi=100, bbox_inches="tight")
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
