"""The CIFAR-10 CNN of conv_net_cifar.py, trained data-parallel: many processes, GPUs or machines.

Model:  the same layers, optimiser (SGD, momentum, weight decay), one-cycle schedule and
        flips as conv_net_cifar.py (the inputs normalised when loaded, not inside the model);
        read the two side by side. What is new here is how the work is shared: every process
        (a "rank") holds a full copy of the model and trains on its own slice of each batch;
        DistributedDataParallel (DDP) averages the gradients of all ranks during backward, so
        every copy takes the same step and stays identical.
Data:   CIFAR-10 as in conv_net_cifar.py; one process per machine downloads it, the others wait.
Expect: about 0.71 test accuracy after the default 5 epochs, with 1 process or many: --batch-size
        is the global batch, so the steps and the schedule do not depend on the process count;
        the result differs a little (the gradients are summed in another order, so they round
        differently, and the rounding grows over the epochs).
        On a 2-core CPU two processes are not reliably faster than one (benchmarks/README.md); data
        parallelism pays with one process per GPU, many cores or many machines.

Run:
    python distributed/conv_net_cifar_ddp.py                                     # 1 process
    torchrun --standalone --nproc-per-node 2 distributed/conv_net_cifar_ddp.py   # 2 on one machine
    torchrun --standalone --nproc-per-node 2 --max-restarts 3 distributed/conv_net_cifar_ddp.py
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-backend c10d \
        --rdzv-endpoint HOST:29500 distributed/conv_net_cifar_ddp.py   # 2 machines: README.md

torchrun starts one process per GPU (NCCL) or, without GPUs, per share of the CPU cores (Gloo).
Rank 0 writes metrics.json, curves.png, model.pt and, after every epoch, snapshot.pt into
--out-dir; a run finding snapshot.pt there resumes after its last epoch (delete it to start
afresh). So under --max-restarts a crashed worker costs at most the epoch it was in.
To use the trained model (the ConvNet class of this file: conv_net_cifar.py's layers, for inputs
normalised as load_cifar10() does here):
    checkpoint = torch.load("runs/conv_net_cifar_ddp/model.pt", weights_only=True)
    model = ConvNet()
    model.load_state_dict(checkpoint["weights"])
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from signal import SIGINT, SIGTERM, signal

import matplotlib.pyplot as plt
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
# The dataset, and the mean and std of its training pixels: all below derives from these.
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CHANNELS, SIZE, MEAN, STD = 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        # padding=1 keeps a 3x3 convolution's output the size of its input.
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 24, 3, padding=1)
        self.fc1 = nn.Linear(24 * 8 * 8, 100)  # two 2x2 poolings: 32x32 -> 16x16 -> 8x8
        self.fc2 = nn.Linear(100, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))  # (N, 8, 32, 32)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (N, 16, 16, 16)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)  # (N, 24, 8, 8)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def epoch_batches(count, batch_size, epoch, seed, ddp):
    """This rank's share of every batch of one epoch: (image indices, which of them to flip).

    Every rank draws the same order and flips for the whole epoch from a generator seeded by
    --seed and the epoch (the idea of DistributedSampler.set_epoch), cuts it into global
    batches, and keeps its own slice of each. So the batches are the same whatever the number
    of ranks, and a resumed run draws the same epoch again. The last batch is smaller
    (50,000 = 195 x 256 + 80): it is split as evenly as it goes, and the loss below is
    divided by the global batch size, so uneven slices still give the one-process gradient.
    """
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(count, generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    for start in range(0, count, batch_size):
        batch = order[start : start + batch_size]
        mine = torch.tensor_split(batch, ddp.size)[ddp.rank]
        yield mine, flips[mine], len(batch)


def train_one_epoch(model, loader, optimizer, scheduler, amp):
    """One pass over this rank's share of every batch: accuracy and mean loss, over all ranks."""
    model.train()
    autocast, scaler = amp
    ranks = dist.get_world_size()
    # Sums of the loss, of correct answers and of images, kept on the device and read once at
    # the end (a read per step would make a GPU wait). float32: some GPUs have no float64.
    totals = torch.zeros(3, device=next(model.parameters()).device)
    for images, labels, global_batch in loader:
        with autocast:
            logits = model(images)
            # DDP averages the ranks' gradients; summing over this slice and dividing by the
            # global batch over the number of ranks makes that average the one-process mean.
            loss = F.cross_entropy(logits, labels, reduction="sum") * ranks / global_batch
        optimizer.zero_grad()
        # DDP all-reduces the gradients during backward(), bucket by bucket. The GradScaler
        # does nothing unless the precision is fp16 (conv_net_cifar.py explains).
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        totals[0] += loss.detach() * global_batch / ranks
        totals[1] += (logits.argmax(1) == labels).sum()
        totals[2] += len(labels)
    # Sums over the ranks.
    dist.all_reduce(totals)
    loss_sum, correct, count = totals.tolist()
    return dict(train_accuracy=correct / count, train_loss=loss_sum / count)


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, data, autocast, split):
    """The model's accuracy and loss on `data` (images, labels), named after the split: each
    rank scores its slice of the images, and the sums of all ranks are added up, so the figures
    equal a one-process evaluation."""
    model.eval()
    images, labels = data
    mine = torch.tensor_split(torch.arange(len(images)), dist.get_world_size())[dist.get_rank()]
    totals = torch.zeros(2, device=images.device)
    for batch in mine.split(1000):
        with autocast:
            logits = model(images[batch])
        loss = F.cross_entropy(logits.float(), labels[batch], reduction="sum")
        totals += torch.stack([loss, (logits.argmax(1) == labels[batch]).sum()])
    dist.all_reduce(totals)
    loss_sum, correct = totals.tolist()
    return {f"{split}_accuracy": correct / len(images), f"{split}_loss": loss_sum / len(images)}


def main(argv=None):
    args = parse_args(argv)
    ddp = start_process_group(args)  # rank, size, local rank and device of this process
    try:
        run_training(args, ddp)
    # Ctrl-C, or SIGTERM from torchrun or a job scheduler.
    except KeyboardInterrupt:
        say(
            ddp,
            f"interrupted: run the same command again to resume from {args.out_dir}/snapshot.pt",
        )
        sys.exit(130)
    # A peer died mid-collective: its own error says why.
    except dist.DistError as err:
        sys.exit(f"error: another process of the group stopped ({err!r})")
    finally:
        dist.destroy_process_group()


def run_training(args, ddp):
    # The initial weights: the same on every rank.
    torch.manual_seed(args.seed)
    # Mixed precision, as conv_net_cifar.py explains: matrix maths in bf16, or in fp16 with a
    # GradScaler that keeps small gradients from vanishing (it does nothing otherwise).
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    autocast = torch.autocast(args.device.type, dtype, enabled=args.precision != "fp32")
    scaler = torch.amp.GradScaler(args.device.type, enabled=args.precision == "fp16")
    (train_images, train_labels), test_data = load_cifar10_once(args, ddp)
    if args.dry_run:
        train_images, train_labels = train_images[:16], train_labels[:16]
        test_data = test_data[0][:16], test_data[1][:16]
    say(
        ddp,
        f"data: {len(train_images)} training and {len(test_data[0])} test images, "
        f"each batch of {args.batch_size} split over {ddp.size} process(es)",
    )

    model = ConvNet().to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=5e-4)
    steps = math.ceil(len(train_images) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.lr, total_steps=args.epochs * steps
    )
    snapshot_path = args.out_dir / "snapshot.pt"
    history = load_snapshot(snapshot_path, model, optimizer, scheduler, args)
    resumed_from = len(history)
    if resumed_from:
        say(ddp, f"resuming from {snapshot_path}: epoch {resumed_from} of {args.epochs} was done")
    # DDP broadcasts rank 0's weights to every rank (so all start equal), and from now on
    # all-reduces the gradients during backward, overlapping that with the rest of backward.
    model = DistributedDataParallel(
        model, device_ids=[args.device] if args.device.type == "cuda" else None
    )

    test_figures = None
    for epoch in range(resumed_from + 1, args.epochs + 1):
        start = time.perf_counter()
        shares = epoch_batches(len(train_images), args.batch_size, epoch, args.seed, ddp)
        # This rank's images of each batch, some flipped: a mirrored cat is still a cat.
        batches = (
            (flip_some(train_images[index], flip), train_labels[index], global_batch)
            for index, flip, global_batch in shares
        )
        # disable=None: a progress bar on a terminal only, and from rank 0 only.
        progress = tqdm(batches, total=steps, disable=None if ddp.rank == 0 else True)
        train_figures = train_one_epoch(model, progress, optimizer, scheduler, (autocast, scaler))
        seconds = time.perf_counter() - start
        test_figures = evaluate(model, test_data, autocast, "test")
        # One writer: the ranks hold the same weights.
        with contextlib.redirect_stdout(sys.stdout if ddp.rank == 0 else None):
            log_epoch(history, epoch=epoch, **train_figures, **test_figures, seconds=seconds)
        if ddp.rank == 0:
            save_snapshot(snapshot_path, model.module, optimizer, scheduler, args, history)

    # The snapshot held every epoch already: nothing was trained.
    if test_figures is None:
        test_figures = evaluate(model, test_data, autocast, "test")
    if ddp.rank == 0:
        results = dict(world_size=ddp.size, backend=ddp.backend, resumed_from_epoch=resumed_from)
        write_metrics(args, history, **test_figures, **results)
        save_plots(history, args.out_dir)
        # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
        weights = {name: tensor.cpu() for name, tensor in model.module.state_dict().items()}
        torch.save(dict(weights=weights), args.out_dir / "model.pt")


def flip_some(images, flip):
    """The images, each one where `flip` is True mirrored left to right."""
    return torch.where(flip.to(images.device).view(-1, 1, 1, 1), images.flip(3), images)


# ---- plumbing: flags, the process group, data, snapshots, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Resuming: a run that finds OUT_DIR/snapshot.pt continues after its last epoch. "
        "To start afresh, delete that file or give another --out-dir.",
    )
    add = p.add_argument
    add("--epochs", type=positive(int), default=5, help="passes over the training set (default 5)")
    add(
        "--batch-size",
        type=positive(int),
        default=256,
        help="images per step, all processes together (default 256)",
    )
    add("--lr", type=positive(float), default=0.05, help="peak learning rate (default 0.05)")
    add(
        "--backend",
        choices=["auto", "nccl", "xccl", "gloo"],
        default="auto",
        help="how processes talk (default auto: NCCL between NVIDIA GPUs, or Gloo where PyTorch "
        "has no NCCL, as on Windows; XCCL between Intel GPUs; Gloo on CPUs)",
    )
    add(
        "--timeout",
        type=positive(int),
        default=300,
        help="seconds to wait for the other processes to join or answer (default 300)",
    )
    args = parse_with_common_flags(p, argv, data="cifar-10-batches-py/")
    # A tiny slice of the data through training and evaluation; no snapshot.
    if args.dry_run:
        args.epochs, args.batch_size = 1, min(args.batch_size, 16)
    return args


def start_process_group(args):
    """Join the other processes; return this one's rank, device, precision and backend.

    torchrun tells every process who it is through environment variables: RANK (0 to
    WORLD_SIZE - 1 over all machines), LOCAL_RANK (on its own machine) and where to meet
    (MASTER_ADDR:MASTER_PORT). Run as plain `python`, none is set: a group of one.
    """
    env = os.environ
    rank, size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    local_rank, local_size = int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
    # Ctrl-C, and the SIGTERM that torchrun and schedulers stop a job with: a clean stop.
    signal(SIGINT, stop_cleanly)
    signal(SIGTERM, stop_cleanly)
    # Each process computes on its share of the cores: more threads than cores only thrash.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    if args.device == "mps":
        sys.exit("error: --device mps: PyTorch has no distributed backend for Apple GPUs")
    # Only rank 0 prints its choice; with "auto", a Mac's GPU is passed over for the CPU.
    args.device = (
        "cpu" if args.device == "auto" and torch.backends.mps.is_available() else args.device
    )
    # Each process takes its own GPU, number LOCAL_RANK, before anything runs on a GPU: else
    # each would first set itself up on GPU 0, costing hundreds of MB there per process.
    found = torch.accelerator.current_accelerator(check_available=True)
    gpus = (
        found is not None and found.type in ("cuda", "xpu") and args.device in ("auto", found.type)
    )
    if gpus:
        if local_size > torch.accelerator.device_count():
            sys.exit(
                f"error: {local_size} processes on one machine but "
                f"{torch.accelerator.device_count()} GPU(s): use --nproc-per-node "
                f"{torch.accelerator.device_count()} (one process per GPU)"
            )
        torch.accelerator.set_device_index(local_rank)
    with contextlib.redirect_stdout(sys.stdout if rank == 0 else None):
        pick_device_and_precision(args)
    device = args.device
    if device.type in ("cuda", "xpu"):
        args.device = device = torch.device(device.type, local_rank)
    # NCCL carries CUDA tensors, XCCL Intel GPUs' (XPU), Gloo CPU tensors.
    gpu_backends = dict(cuda="nccl", xpu="xccl")
    backend = args.backend if args.backend != "auto" else gpu_backends.get(device.type, "gloo")
    # PyTorch for Windows has no NCCL: there Gloo carries the CUDA tensors (its all-reduce and
    # broadcast, all DDP needs, work on them), more slowly.
    if args.backend == "auto" and backend == "nccl" and not dist.is_backend_available("nccl"):
        backend = "gloo"
    needs = dict(nccl="cuda", xccl="xpu")
    if needs.get(backend, device.type) != device.type or backend == "gloo" and device.type == "xpu":
        sys.exit(
            f"error: --backend {backend} cannot carry {device.type} tensors: use --backend auto"
        )
    if not dist.is_backend_available(backend):
        fix = "--device cpu" if args.backend == "auto" else "--backend auto"
        sys.exit(f"error: this PyTorch build has no {backend} backend: use {fix}")
    if "MASTER_ADDR" in env:
        store = rendezvous_store(env, rank, size, args.timeout)
    elif size == 1:
        # A group of one: nothing to meet.
        store = dist.HashStore()
    else:
        sys.exit(
            "error: WORLD_SIZE is set but MASTER_ADDR is not: start the processes with torchrun"
        )
    try:
        dist.init_process_group(
            backend,
            store=store,
            rank=rank,
            world_size=size,
            timeout=timedelta(seconds=args.timeout),
        )
    except (RuntimeError, dist.DistError) as err:
        sys.exit(
            f"error: the {size} processes did not all join ({err!r}): start the same command on "
            "every machine, with the same --nnodes and --rdzv-endpoint, or raise --timeout"
        )
    if args.batch_size < size:
        sys.exit(
            f"error: --batch-size {args.batch_size} is smaller than the {size} processes sharing it"
        )
    ddp = argparse.Namespace(rank=rank, size=size, local_rank=local_rank, backend=backend)
    say(ddp, f"processes: {size} ({backend}), {torch.get_num_threads()} thread(s) each")
    return ddp


def rendezvous_store(env, rank, size, timeout):
    """The key-value store the processes meet through, with a fresh key space per restart.

    torchrun's agent keeps one store (at MASTER_ADDR:MASTER_PORT) for all the restarts of a
    job. After a worker crashes and torchrun restarts the group, the default set-up would
    read the addresses the dead processes left in that store, and Gloo would time out
    connecting to them (PyTorch assumes a fresh store per restart; with torchrun there is
    none). A prefix naming the restart round keeps each round's keys apart.
    """
    try:
        store = dist.TCPStore(
            env["MASTER_ADDR"],
            int(env["MASTER_PORT"]),
            size,
            # Under torchrun the agent runs the store; started some other way, rank 0 does.
            is_master=rank == 0 and env.get("TORCHELASTIC_USE_AGENT_STORE") != "True",
            timeout=timedelta(seconds=timeout),
            # PyTorch for Windows is built without libuv, the default store's server.
            use_libuv=sys.platform != "win32",
        )
    except (RuntimeError, dist.DistError) as err:
        sys.exit(
            f"error: could not reach {env['MASTER_ADDR']}:{env['MASTER_PORT']} ({err!r}): "
            "check the address and that every machine runs the same command, or raise --timeout"
        )
    return dist.PrefixStore(f"round{env.get('TORCHELASTIC_RESTART_COUNT', 0)}", store)


def stop_cleanly(signum, frame):
    """Ctrl-C or SIGTERM: the same clean stop (main() says how to resume)."""
    raise KeyboardInterrupt


def say(ddp, message):
    """Print from rank 0 only: one line per event, not one per process."""
    if ddp.rank == 0:
        print(message, flush=True)


def load_cifar10_once(args, ddp):
    """Every rank's copy of the data; one process per machine downloads it while the others
    wait at a barrier, so they never write the same files at once."""
    if ddp.local_rank != 0:
        dist.barrier()
    data = load_cifar10(args.data_dir, args.device)
    if ddp.local_rank == 0:
        dist.barrier()
    return data


def load_cifar10(data_dir, device):
    """Train and test (images, labels) as tensors on `device`, images normalised, (N, 3, 32, 32).

    The whole dataset fits in memory (50,000 x 3 x 32 x 32), so it is decoded and normalised
    once here, rather than image by image every epoch by a DataLoader.
    """
    archive = data_dir / CIFAR10.filename
    if archive.exists() and not check_integrity(str(archive), CIFAR10.tgz_md5):
        sys.exit(f"error: {archive} failed its MD5 check (corrupt or partial download): delete it")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download = not (data_dir / CIFAR10.base_folder).exists()
        datasets = [
            CIFAR10(str(data_dir), train=train, download=download) for train in (True, False)
        ]
    # No network, a broken connection, unpacked files failing their MD5 check:
    except (OSError, RuntimeError) as err:
        sys.exit(
            f"error: could not get CIFAR-10 ({err!r}). Download {CIFAR10.url} by hand "
            f"and put it in {data_dir}/ (or unpack it there as {CIFAR10.base_folder}/)"
        )
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    tensors = []
    for dataset in datasets:
        # The files hold (N, height, width, channel) bytes; PyTorch wants (N, C, H, W).
        images = torch.from_numpy(dataset.data).to(device).permute(0, 3, 1, 2)
        images = (images.float().div(255) - mean) / std
        # channels_last (NHWC in memory) is the layout the fast CPU and CUDA convolutions prefer;
        # several MPS kernels do not support it.
        if device.type != "mps":
            images = images.contiguous(memory_format=torch.channels_last)
        tensors.append((images, torch.tensor(dataset.targets, device=device)))
    return tensors


def settings(args):
    """What a snapshot must agree with to be continued."""
    return dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)


def save_snapshot(path, model, optimizer, scheduler, args, history):
    """Everything needed to continue after this epoch, written atomically: into a temporary
    file first, then renamed over the old snapshot (os.replace is atomic), so a crash while
    writing leaves the previous snapshot whole. Tensors and plain values only (weights_only)."""
    if args.dry_run:
        return
    state = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), history=history)
    # No random state: each epoch draws its order and flips from its own seeded generator.
    state.update(scheduler=scheduler.state_dict(), settings=settings(args))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_snapshot(path, model, optimizer, scheduler, args):
    """Load the snapshot at `path` into model, optimizer and scheduler, if there is one;
    return its history (the epochs done), or [] to start afresh."""
    if args.dry_run or not path.is_file():
        return []
    try:
        state = torch.load(path, map_location=args.device, weights_only=True)
        saved = state["settings"]
        if saved != settings(args):
            differ = [
                f"--{k.replace('_', '-')} {saved[k]}"
                for k in saved
                if saved[k] != settings(args)[k]
            ]
            sys.exit(
                f"error: {path} was made with {', '.join(differ)}: run with those, or delete it "
                "(or give another --out-dir) to start afresh"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    # Empty, truncated, not a torch file, or another script's file: one line.
    except Exception as err:
        sys.exit(
            f"error: {path} is not a snapshot of this script ({err!r}): delete it to start afresh"
        )
    return state["history"]


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch, training and test."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: augmented, during the epoch)")
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
