"""A GPT, written out: a decoder-only Transformer that reads Shakespeare, then writes more of it.

RNN/lstm_char_lm.py's task, with causal self-attention (this script's one idea) in place of the
LSTM's state, which squeezes all it has read into one vector, character by character: attention
lets each position of a window look back at every earlier one directly, all positions at once.

Model:  character embedding + learned position embedding (width 128, windows of 128 characters)
        -> 4 pre-LayerNorm blocks (4-head causal self-attention, a GELU MLP of 512) ->
        LayerNorm -> linear to every character, sharing the embedding's weights (0.8M weights).
Training: shuffled windows of the text; AdamW (weight decay on matrices only), warm-up, cosine.
Data:   tiny Shakespeare, read as RNN/lstm_char_lm.py reads it (the same file, vocabulary and
        90%/10% split); val_loss, nats per character over the whole validation text, compares.
Expect: validation loss about 1.51 nats per character after the default 9 epochs, about 8
        minutes on a 2-core CPU in fp32; transformer/README.md races it against the LSTM.

Run:
    python transformer/gpt_char_lm.py                    # train, printing a sample every epoch
    python transformer/gpt_char_lm.py --dry-run          # a tiny run: checks the set-up
    python transformer/gpt_char_lm.py --generate 500 --prompt "ROMEO:" --temperature 0.8

Writes model.pt (the best epoch's weights, the characters, the settings), metrics.json and
curves.png into --out-dir. model.pt holds CPU tensors: it loads on any machine. To use it:
    checkpoint = torch.load("runs/gpt_char_lm/model.pt", weights_only=True)
    model = GPT(len(checkpoint["chars"]), **checkpoint["config"])
    model.load_state_dict(checkpoint["weights"])
"""

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from signal import SIGINT, signal

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.datasets.utils import download_url
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
MD5 = "6fb458f1232090904fb40fe944165e91"
# The last tenth of the text validates (as in RNN/lstm_char_lm.py).
VAL_FRACTION = 0.1


def attention_written_out(q, k, v):
    """Causal self-attention in plain tensor operations; q, k, v are (batch, heads, time, size).
    Each position's query is compared with every position's key (a dot product, scaled by
    1/sqrt(size) so that the scores do not grow with the size and saturate the softmax); the
    softmax of a row of scores says how much of each position's value to take."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    # The causal mask: position t may not look after t. Training predicts every position's next
    # character at once, and t's answer is the input at t + 1: unmasked, the model would copy it,
    # learn nothing, and fail when it writes, where the future does not exist yet. -inf becomes
    # a weight of exactly 0 after the softmax.
    future = torch.ones(q.size(-2), q.size(-2), dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, width, heads, written_out=False):
        super().__init__()
        self.heads, self.written_out = heads, written_out
        # Queries, keys and values of every position, made by one matrix product.
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        batch, time_steps, width = x.shape
        # Each head works on its own slice of the width: (batch, heads, time, width / heads).
        q, k, v = (
            part.view(batch, time_steps, self.heads, width // self.heads).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=2)
        )
        if self.written_out:
            y = attention_written_out(q, k, v)
        else:
            # The same maths in one fused kernel: faster, and it never stores the
            # (time x time) matrix of scores (tests/test_gpt.py checks that the two agree).
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        # The heads joined side by side again, then mixed by one more linear layer.
        return self.proj(y.transpose(1, 2).reshape(batch, time_steps, width))


class Block(nn.Module):
    """Pre-LN: each part reads a LayerNorm of its input and adds its output back (a residual)."""

    def __init__(self, width, heads):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads)
        # The MLP works on each position alone: attention moves information between positions,
        # the MLP computes with it.
        wide = 4 * width
        self.mlp = nn.Sequential(nn.Linear(width, wide), nn.GELU(), nn.Linear(wide, width))

    def forward(self, x):
        x = x + self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, context=128, width=128, layers=4, heads=4):
        super().__init__()
        self.context = context
        self.embedding = nn.Embedding(vocab_size, width)
        # Attention itself ignores order (it compares every pair alike): a learned vector per
        # position, added to the character's, tells the blocks where each character is.
        self.position = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab_size, bias=False)
        # Weight tying: the output layer scores each character with its embedding vector.
        self.out.weight = self.embedding.weight
        # Small initial weights (GPT-2's 0.02): the first predictions are close to uniform.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, inputs):
        """Logits for the next character at every position of `inputs` (batch, time)."""
        positions = torch.arange(inputs.size(1), device=inputs.device)
        return self.out(self.norm(self.blocks(self.embedding(inputs) + self.position(positions))))


def shuffled_windows(ids, context):
    """`ids` cut into windows of context + 1 characters (inputs, and one on, targets) from a random
    offset, shuffled: each character a target at most once, the borders moved epoch to epoch."""
    offset = int(torch.randint(context, ()))
    windows = ids[offset:].unfold(0, context + 1, context)
    return windows[torch.randperm(len(windows), device=ids.device)]


def train_one_epoch(model, batches, optimizer, scheduler, amp):
    """One pass over `batches` of windows: the mean loss per character, as trained."""
    model.train()
    autocast, scaler = amp
    # Summed on the device and read once, at the end: a read every step would make a GPU wait.
    total_loss, count = 0, 0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for batch in tqdm(batches, disable=None):
        # The targets are the inputs shifted by one: every position predicts its next character.
        inputs, targets = batch[:, :-1], batch[:, 1:]
        with autocast:
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        # The GradScaler does nothing unless the precision is fp16 (conv_net_cifar.py explains);
        # then the gradients must be unscaled before they are clipped.
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach() * targets.numel()
        count += targets.numel()
    return dict(train_loss=float(total_loss) / count)


def scored_windows(length, context):
    """Where the windows that evaluate a text of `length` characters start, and the first position
    each scores: every target (characters 1 to length - 1) once, with at least half a window
    before it (the first ones with what there is); the last window ends where the text ends."""
    half = context // 2
    offsets = list(range(0, length - context - 1, half)) + [length - context - 1]
    first = [0] + [before + context - offset for before, offset in zip(offsets, offsets[1:])]
    return torch.tensor(offsets), torch.tensor(first)


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, ids, autocast, split):
    """Loss per character over the whole text `ids`, in nats and bits, each character read with at
    least half a window before it (scored_windows()), as lstm_char_lm.py reads all before it."""
    model.eval()
    offsets, first = (t.to(ids.device) for t in scored_windows(len(ids), model.context))
    positions = torch.arange(model.context + 1, device=ids.device)
    windows, scored = ids[offsets[:, None] + positions], positions[1:] > first[:, None]
    total_loss = torch.zeros((), device=ids.device)
    for batch, mask in zip(windows.split(64), scored.split(64)):
        with autocast:
            logits = model(batch[:, :-1]).float()
        losses = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
        total_loss += (losses * mask).sum()
    loss = total_loss.item() / (len(ids) - 1)
    return {f"{split}_loss": loss, f"{split}_bits_per_char": loss / math.log(2)}


@torch.no_grad()
def generate(model, chars, prompt, length, sampling):
    """`prompt` and `length` characters written after it, one at a time, each sampled from the
    model's probabilities for the next character and fed back in; sampling: (temperature, top_k)."""
    model.eval()
    temperature, top_k = sampling
    device = next(model.parameters()).device
    index = {char: i for i, char in enumerate(chars)}
    unknown = sorted(set(prompt) - set(index))
    if unknown:
        sys.exit(f"error: --prompt has characters the model never saw: {unknown}")
    ids = torch.tensor([[index[c] for c in prompt]], device=device)
    for _ in range(length):
        # The model has no state: it reads the last `context` characters again for each new one.
        logits = model(ids[:, -model.context :])[0, -1].float() / temperature
        # Temperature divides the logits: below 1 sharpens the probabilities (safer, more
        # repetitive text), above 1 flattens them. Top-k samples among the k likeliest only.
        if top_k:
            logits[logits < logits.topk(min(top_k, len(chars))).values[-1]] = float("-inf")
        # Sampled on the device and kept there: no read back to the CPU per character.
        ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1)[None]], dim=1)
    return "".join(chars[i] for i in ids[0].tolist())


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same initial weights, windows and samples: the same result on the same
    # CPU (GPU runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args)
    model_path = args.checkpoint or args.out_dir / "model.pt"
    sampling = (args.temperature, args.top_k)
    if args.generate:
        model, chars = load_checkpoint(model_path, args.device)
        return print(generate(model, chars, args.prompt, args.generate, sampling))
    # Mixed precision as conv_net_cifar.py explains (the GradScaler acts in fp16 only).
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    autocast = torch.autocast(args.device.type, dtype, enabled=args.precision != "fp32")
    scaler = torch.amp.GradScaler(args.device.type, enabled=args.precision == "fp16")

    text = read_text(download(args.data_dir))[: 5000 if args.dry_run else None]
    chars = sorted(set(text))
    index = {char: i for i, char in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    cut = int(len(ids) * (1 - VAL_FRACTION))
    train_ids, val_ids = ids[:cut].to(args.device), ids[cut:].to(args.device)
    print(f"data: {cut} training and {len(ids) - cut} validation characters")
    if len(val_ids) <= args.context:
        sys.exit(f"error: --context {args.context} is longer than the validation text")
    config = dict(context=args.context, width=args.width, layers=args.layers, heads=args.heads)
    model = GPT(len(chars), **config).to(args.device)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} weights")
    # Weight decay pulls the matrices towards 0; biases, LayerNorms' scales and shifts have too
    # few numbers to overfit, and decaying them only hinders.
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    groups = [dict(params=matrices, weight_decay=0.1), dict(params=others, weight_decay=0.0)]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.99))
    # The steps of the whole run: windows an epoch at most (at offset 0), in batches.
    steps = args.epochs * math.ceil((len(train_ids) - 1) // args.context / args.batch_size)
    # Warm-up: the first steps, taken with Adam's statistics still unsettled, are small ones;
    # then a cosine decay to a tenth of the peak, where the last steps settle the weights.
    warmup = max(1, steps // 20)
    cosine = [0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)) for step in range(steps + 1)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, cosine[min(step, steps)])
    )

    history, best_val_loss = [], float("inf")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        batches = shuffled_windows(train_ids, args.context).split(args.batch_size)
        train_figures = train_one_epoch(model, batches, optimizer, scheduler, (autocast, scaler))
        seconds = time.perf_counter() - start
        val_figures = evaluate(model, val_ids, autocast, "val")
        log_epoch(history, epoch=epoch, **train_figures, **val_figures, seconds=seconds)
        # Watch the text improve: a short sample after every epoch.
        print(generate(model, chars, "\n", 200, sampling), "\n")
        if val_figures["val_loss"] < best_val_loss:
            best_val_loss = val_figures["val_loss"]
            save_checkpoint(model, chars, config, model_path)
            print(f"saved epoch {epoch} to {model_path}: its validation loss is the lowest yet")

    best = min(history, key=lambda h: h["val_loss"])
    write_metrics(args, history, val_loss=best["val_loss"], best_epoch=best["epoch"])
    save_plots(history, args.out_dir)


# ---- plumbing: flags, data, checkpoints, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--epochs", type=positive(int), default=9, help="passes over the training text (default 9)")
    add("--batch-size", type=positive(int), default=32, help="windows per step (default 32)")
    add("--lr", type=positive(float), default=3e-3, help="peak AdamW learning rate (default 3e-3)")
    add("--context", type=positive(int), default=128, help="characters per window (default 128)")
    add("--width", type=positive(int), default=128, help="numbers per position (default 128)")
    add("--layers", type=positive(int), default=4, help="Transformer blocks (default 4)")
    add("--heads", type=positive(int), default=4, help="attention heads per block (default 4)")
    add("--checkpoint", type=Path, help="the saved model (default OUT_DIR/model.pt)")
    add("--generate", type=positive(int), metavar="N", help="write N characters with the model")
    add("--prompt", default="\n", help="text to start --generate with (default a new line)")
    add("--temperature", type=positive(float), default=0.8, help="<1 safer, >1 wilder (default .8)")
    add("--top-k", type=int, default=0, help="sample among the k likeliest (default 0: all)")
    args = parse_with_common_flags(p, argv, data="tinyshakespeare/")
    training = "epochs batch_size lr context width layers heads".split()
    if args.generate and any(getattr(args, f) != p.get_default(f) for f in training):
        p.error("--generate uses the checkpoint's settings: drop the training flags")
    if args.width % args.heads:
        p.error(f"--width ({args.width}) must be a multiple of --heads ({args.heads})")
    if args.top_k < 0:
        p.error(f"--top-k must be 0 (off) or more, got {args.top_k}")
    if not args.prompt:
        p.error("--prompt needs at least one character")
    if args.dry_run:
        args.epochs, args.batch_size, args.checkpoint = 1, 4, None
    return args


def download(data_dir):
    """data_dir/tinyshakespeare/input.txt, downloaded on first use (its MD5 checked)."""
    path = data_dir / "tinyshakespeare" / "input.txt"
    if path.is_file():
        return path
    # No network, a broken connection, a download failing its MD5 check:
    try:
        download_url(URL, str(path.parent), md5=MD5)
    except (OSError, RuntimeError) as err:
        sys.exit(f"error: could not get tiny Shakespeare ({err!r}): put {URL} in {path.parent}/")
    return path


def read_text(path):
    """The whole text, or a one-line error naming the first line that is not UTF-8."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        sys.exit(f"error: {path} is not UTF-8 text (line {line}): replace it")
    if len(text) < 100:
        sys.exit(f"error: {path} holds {len(text)} characters: too little text to learn from")
    return text


def save_checkpoint(model, chars, config, path):
    # CPU tensors, strings and numbers only: torch.load(weights_only=True) loads it anywhere.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(weights=weights, chars=chars, config=config), path)


def load_checkpoint(path, device):
    """(model, characters) saved at `path`, or a one-line error saying what is wrong."""
    if not path.is_file():
        sys.exit(f"error: no model at {path}: train first with python {Path(__file__).name}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        model = GPT(len(checkpoint["chars"]), **checkpoint["config"]).to(device)
        model.load_state_dict(checkpoint["weights"])
    # Empty, truncated, not a torch file, or another script's checkpoint: one line.
    except Exception as err:
        sys.exit(f"error: {path} is not a checkpoint of this script ({err!r})")
    return model, checkpoint["chars"]


def save_plots(history, out_dir):
    """curves.png: training and validation loss per epoch, in nats per character."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split in ("train", "val"):
        ax.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
    ax.set(xlabel="epoch", ylabel="loss (nats per character)")
    ax.legend()
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
