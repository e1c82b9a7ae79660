"""A character-level language model: an LSTM that reads Shakespeare, then writes more of it.

A language model predicts the next character from the ones before it. Trained on one long
text, it learns spelling, words, punctuation, the layout of a play; sampled one character at
a time, each fed back in, it writes new text in the same style (Karpathy's char-rnn).

Model:  character embedding (64) -> 1-layer LSTM (hidden 512) -> dropout 0.2 -> linear to
        every character.
Training: truncated backpropagation through time (TBPTT) across batches, this script's one
        idea. The text is cut into --batch-size parallel streams, read in windows of --bptt
        characters; the LSTM state left by one window starts the next one, detached from the
        graph (see batchify() and train_one_epoch()). Adam with a one-cycle schedule,
        gradients clipped.
Data:   tiny Shakespeare (1,115,394 characters, 65 distinct), downloaded into the top-level
        data/tinyshakespeare/ on first use; the first 90% trains, the last 10% validates
        (the split nanoGPT reports on).
Expect: validation loss about 1.48 nats per character (2.14 bits) after the default 6 epochs,
        6-7 minutes in all on a 2-core CPU in fp32 (README.md's table; benchmarks/README.md).
        Guessing uniformly among the 65 characters scores ln 65 = 4.17.

Run:
    python RNN/lstm_char_lm.py                       # train, printing a sample every epoch
    python RNN/lstm_char_lm.py --dry-run             # a tiny run: checks the set-up
    python RNN/lstm_char_lm.py --generate 500 --prompt "ROMEO:" --temperature 0.8

Writes model.pt (the best epoch's weights, the characters, the settings), metrics.json and
curves.png into --out-dir. model.pt holds CPU tensors: it loads on any machine. To use it:
    checkpoint = torch.load("runs/lstm_char_lm/model.pt", weights_only=True)
    model = CharLSTM(len(checkpoint["chars"]), **checkpoint["config"])
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
# The last tenth of the text validates.
VAL_FRACTION = 0.1


class CharLSTM(nn.Module):
    def __init__(self, vocab_size, embedding=64, hidden=512, layers=1, dropout=0.2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding)
        # Dropout on the LSTM's output, and between stacked layers (nn.LSTM's own, for 2 or more).
        between = dropout if layers > 1 else 0.0
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True, dropout=between)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, inputs, state=None):
        """Logits for the next character at every position of `inputs` (streams, time), and the
        LSTM state after the last position, to start the next window with."""
        # CUDA autocast would run cuDNN's LSTM in float16 (lstm_imdb.py explains): opt out.
        with torch.autocast("cuda", enabled=False):
            outputs, state = self.lstm(self.embedding(inputs), state)
        return self.out(self.dropout(outputs)), state


def batchify(ids, rows):
    """The text as `rows` streams that are read side by side, each a contiguous piece:

        text:  A B C D E F G H I J K L M N O P Q R S T U V W X   (the leftover end is dropped)

        rows=4:             window 1   window 2   ...   (--bptt 3)
            row 0:  A B C D E F   ->   A B C   |  D E F
            row 1:  G H I J K L   ->   G H I   |  J K L
            row 2:  M N O P Q R   ->   M N O   |  P Q R
            row 3:  S T U V W X   ->   S T U   |  V W X

    Row k of window 2 continues row k of window 1, so the LSTM state that window 1 ends with
    is the right one to start window 2: context flows further back than one window.
    """
    length = len(ids) // rows
    return ids[: rows * length].view(rows, length)


def windows(streams, bptt):
    """(inputs, targets) of each window: the targets are the inputs shifted by one character."""
    for offset in range(0, streams.size(1) - 1, bptt):
        end = min(offset + bptt, streams.size(1) - 1)
        yield streams[:, offset:end], streams[:, offset + 1 : end + 1]


def detach(state):
    """The same state values, cut off from the graph of the windows before: the truncation."""
    return tuple(s.detach() for s in state)


def train_one_epoch(model, streams, optimizer, scheduler, loop):
    """One pass over the training streams, `loop["bptt"]` characters at a time: the mean
    loss per character, as trained."""
    model.train()
    # Summed on the device and read once, at the end: a read every step would make a GPU wait.
    total_loss = torch.zeros((), device=streams.device)
    state = None
    steps = math.ceil((streams.size(1) - 1) / loop["bptt"])
    # disable=None: a progress bar on a terminal only, not in a log file.
    for inputs, targets in tqdm(windows(streams, loop["bptt"]), total=steps, disable=None):
        # Carry the state over from the window before (its values: long-range context), but
        # detach it: without that, backward() would run back through every window read so far,
        # and memory and time per step would grow with each window.
        if state is not None:
            state = detach(state)
        with loop["autocast"]:
            logits, state = model(inputs, state)
        # cross_entropy takes raw logits (it applies log-softmax itself), flattened over the
        # streams and positions; float(): the loss summed in fp32 even under autocast.
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        # An LSTM's gradients occasionally explode (a long product of the same weights):
        # clipping their norm to 1 keeps one bad window from undoing the training so far.
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        total_loss += loss.detach() * targets.numel()
    return dict(train_loss=total_loss.item() / (streams.size(0) * (streams.size(1) - 1)))


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, streams, autocast, split):
    """Loss per character over `streams`, each read from start to end with its state carried, in
    nats (natural log, what cross_entropy returns) and in bits (log base 2)."""
    model.eval()
    total_loss = torch.zeros((), device=streams.device)
    state = None
    for inputs, targets in windows(streams, 1000):
        with autocast:
            logits, state = model(inputs, state)
        total_loss += F.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), reduction="sum"
        )
    loss = total_loss.item() / (streams.size(0) * (streams.size(1) - 1))
    return {f"{split}_loss": loss, f"{split}_bits_per_char": loss / math.log(2)}


@torch.no_grad()
def generate(model, chars, prompt, length, temperature):
    """`prompt` and `length` characters written after it, one at a time, each sampled from the
    model's probabilities for the next character and fed back in."""
    model.eval()
    device = next(model.parameters()).device
    index = {char: i for i, char in enumerate(chars)}
    unknown = sorted(set(prompt) - set(index))
    if unknown:
        sys.exit(f"error: --prompt has characters the model never saw: {unknown}")
    # The prompt, read in one pass, sets the state; its last character's logits come out.
    logits, state = model(torch.tensor([[index[c] for c in prompt]], device=device))
    written = []
    for _ in range(length):
        # Temperature divides the logits: below 1 sharpens the probabilities (safer, more
        # repetitive text), above 1 flattens them (wilder text, more misspellings).
        probabilities = (logits[0, -1].float() / temperature).softmax(-1)
        # Sampled on the device and kept there: no read back to the CPU per character.
        next_char = torch.multinomial(probabilities, 1)
        written.append(next_char)
        logits, state = model(next_char.view(1, 1), state)
    return prompt + "".join(chars[i] for i in torch.cat(written).tolist())


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same initial weights and samples: the same result on the same CPU (GPU runs
    # differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args, fp16=False)
    model_path = args.checkpoint or args.out_dir / "model.pt"
    if args.generate:
        model, chars = load_checkpoint(model_path, args.device)
        return print(generate(model, chars, args.prompt, args.generate, args.temperature))
    # PyTorch's LSTM on a CPU (oneDNN) has a bf16 version on AVX-512 CPUs only.
    if args.device.type == "cpu" and args.precision == "bf16":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            sys.exit(
                "error: --precision bf16: PyTorch has no bf16 LSTM on this CPU; "
                "use --precision auto"
            )
    # bf16 for the matrix maths where the hardware has it (conv_net_cifar.py explains).
    autocast = torch.autocast(args.device.type, torch.bfloat16, enabled=args.precision == "bf16")

    text = read_text(download(args.data_dir))
    if args.dry_run:
        text = text[:5000]
    # The characters of the whole text are the vocabulary (the validation part has no new ones
    # in tiny Shakespeare; a text of your own might).
    chars = sorted(set(text))
    index = {char: i for i, char in enumerate(chars)}
    ids = torch.tensor([index[c] for c in text])
    cut = int(len(ids) * (1 - VAL_FRACTION))
    train_streams = batchify(ids[:cut], args.batch_size).to(args.device)
    # Few streams for validation: each is read whole, its state carried from start to end.
    val_streams = batchify(ids[cut:], 8).to(args.device)
    print(
        f"data: {cut} training and {len(ids) - cut} validation characters; "
        f"{len(chars)} distinct; {args.batch_size} streams of {train_streams.size(1)}"
    )

    config = dict(embedding=64, hidden=args.hidden, layers=args.layers, dropout=args.dropout)
    model = CharLSTM(len(chars), **config).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    total_steps = args.epochs * math.ceil((train_streams.size(1) - 1) / args.bptt)
    # One-cycle: warm up, then anneal to ~0. With Adam it also cycles beta1 (the momentum of
    # its gradient average) between 0.95 and 0.85, as it cycles SGD's momentum.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps)
    # How train_one_epoch() reads the streams: --bptt characters a window, under autocast.
    loop = dict(bptt=args.bptt, autocast=autocast)

    history, best_val_loss = [], float("inf")
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_figures = train_one_epoch(model, train_streams, optimizer, scheduler, loop)
        seconds = time.perf_counter() - start
        val_figures = evaluate(model, val_streams, autocast, "val")
        log_epoch(history, epoch=epoch, **train_figures, **val_figures, seconds=seconds)
        # Watch the text improve: a short sample after every epoch.
        print(generate(model, chars, "\n", 200, args.temperature), "\n")
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
    add("--epochs", type=positive(int), default=6, help="passes over the training text (default 6)")
    add("--batch-size", type=positive(int), default=64, help="parallel streams (default 64)")
    add("--lr", type=positive(float), default=4e-3, help="peak Adam learning rate (default 4e-3)")
    add("--bptt", type=positive(int), default=100, help="characters per window (default 100)")
    add("--hidden", type=positive(int), default=512, help="LSTM units per layer (default 512)")
    add("--layers", type=positive(int), default=1, help="stacked LSTM layers (default 1)")
    add("--dropout", type=float, default=0.2, help="dropout on the LSTM's outputs (default 0.2)")
    add("--checkpoint", type=Path, help="the saved model (default OUT_DIR/model.pt)")
    add("--generate", type=positive(int), metavar="N", help="write N characters with the model")
    add("--prompt", default="\n", help="text to start --generate with (default a new line)")
    add(
        "--temperature",
        type=positive(float),
        default=0.8,
        help="below 1: safer, more repetitive text; above 1: wilder (default 0.8)",
    )
    args = parse_with_common_flags(p, argv, data="tinyshakespeare/", fp16=False)
    training = "epochs batch_size lr bptt hidden layers dropout".split()
    if args.generate and any(getattr(args, f) != p.get_default(f) for f in training):
        p.error("--generate uses the checkpoint's settings: drop the training flags")
    if not 0 <= args.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {args.dropout}")
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
    # CPU tensors (they load on any machine), strings and numbers only: loadable with
    # torch.load(weights_only=True), which refuses to run code hidden in a file.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(weights=weights, chars=chars, config=config), path)


def load_checkpoint(path, device):
    """(model, characters) saved at `path`, or a one-line error saying what is wrong."""
    if not path.is_file():
        sys.exit(f"error: no model at {path}: train first with python {Path(__file__).name}")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
        model = CharLSTM(len(checkpoint["chars"]), **checkpoint["config"]).to(device)
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
