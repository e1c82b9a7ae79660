"""The CIFAR-10 CNN of conv_net_cifar.py, trained data-parallel: many processes, GPUs or machines.

Model:  the same small CNN, optimiser (SGD, Nesterov momentum, weight decay), one-cycle schedule
        and flips as conv_net_cifar.py; read the two side by side. What is new here is how the
        work is shared: every process (a "rank") holds a full copy of the model and trains on
        its own slice of each batch; DistributedDataParallel (DDP) averages the gradients of
        all ranks during backward, so every copy takes the same step and stays identical.
Data:   CIFAR-10 as in conv_net_cifar.py; one process per machine downloads it, the others wait.
Expect: about 0.70 test accuracy after the default 5 epochs, with 1 process or many: --batch-size
        is the global batch, so the steps and the result do not depend on the process count.
        On a 2-core CPU two processes are no faster than one (README has measured figures);
        data parallelism pays with one process per GPU, many cores or many machines.

Run:
    python distributed/conv_net_cifar_ddp.py                                     # 1 process
    torchrun --standalone --nproc-per-node 2 distributed/conv_net_cifar_ddp.py   # 2 on this machine
    torchrun --standalone --nproc-per-node 2 --max-restarts 3 distributed/conv_net_cifar_ddp.py
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-backend c10d \
        --rdzv-endpoint HOST:29500 distributed/conv_net_cifar_ddp.py   # 2 machines: see README

torchrun starts one process per GPU (NCCL) or, without GPUs, per share of the CPU cores (Gloo).
Rank 0 writes metrics.json, curves.png and, after every epoch, snapshot.pt into --out-dir; a run
finding snapshot.pt there resumes after its last epoch (delete it to start afresh). So under
--max-restarts a crashed worker costs at most the epoch it was in.
"""

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw into files; works without a display (servers, CI)
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
# Inside this repository all scripts share its top-level data/ and runs/ (the folder holding
# data/README.md); a copy of this script anywhere else keeps both in its own folder.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel mean and std of the CIFAR-10 training images, for normalisation.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


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


def epoch_batches(count, batch_size, epoch, seed, rank, world_size):
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
        mine = torch.tensor_split(batch, world_size)[rank]
        yield mine, flips[mine], len(batch)


def train_one_epoch(
    model, images, labels, optimizer, scheduler, scaler, autocast, epoch, args, ddp
):
    """One pass over the training set: (mean loss, accuracy), summed over all ranks."""
    model.train()
    totals = torch.zeros(2, dtype=torch.float64, device=images.device)  # loss sum, correct
    steps = math.ceil(len(images) / args.batch_size)
    batches = epoch_batches(len(images), args.batch_size, epoch, args.seed, ddp.rank, ddp.size)
    # disable=None: no progress bar when the output is not a terminal; only rank 0 draws one.
    for index, flip, global_batch in tqdm(
        batches, total=steps, disable=None if ddp.rank == 0 else True
    ):
        index, flip = index.to(images.device), flip.to(images.device)
        x, y = images[index], labels[index]
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)  # a mirrored cat is still a cat
        with autocast:
            logits = model(x)
            # DDP averages the ranks' gradients; summing over this slice and dividing by the
            # global batch over the number of ranks makes that average the one-process mean.
            loss = F.cross_entropy(logits, y, reduction="sum") * ddp.size / global_batch
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # DDP all-reduces the gradients here, bucket by bucket
        scaler.step(optimizer)  # (unscales the gradients first, skips the step if any overflowed)
        scaler.update()
        scheduler.step()
        totals += torch.stack(
            [
                loss.detach().double() * global_batch / ddp.size,
                (logits.argmax(1) == y).sum().double(),
            ]
        )
    dist.all_reduce(totals)  # sum over the ranks
    return (totals / len(images)).tolist()


@torch.no_grad()  # no gradients needed: faster and lighter
def evaluate(model, images, labels, autocast, ddp, batch_size=1000):
    """(mean loss, accuracy, confusion counts): each rank scores its slice of the images, and
    the sums of all ranks are added up, so the figures equal a one-process evaluation."""
    model.eval()
    mine = torch.tensor_split(torch.arange(len(images), device=images.device), ddp.size)[ddp.rank]
    loss_sum = torch.zeros(1, dtype=torch.float64, device=images.device)
    counts = torch.zeros(100, dtype=torch.int64, device=images.device)  # [true * 10 + predicted]
    for start in range(0, len(mine), batch_size):
        x, y = images[mine[start : start + batch_size]], labels[mine[start : start + batch_size]]
        with autocast:
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        counts += torch.bincount(y * 10 + logits.argmax(1), minlength=100)
    dist.all_reduce(loss_sum)
    dist.all_reduce(counts)
    counts = counts.view(10, 10).cpu()
    return loss_sum.item() / len(images), (counts.trace() / counts.sum()).item(), counts


def main(argv=None):
    args = parse_args(argv)
    ddp = start_process_group(args)  # rank, size, local rank and device of this process
    try:
        train(args, ddp)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from torchrun or a job scheduler
        say(
            ddp,
            f"interrupted: run the same command again to resume from {args.out_dir}/snapshot.pt",
        )
        sys.exit(130)
    except dist.DistError as err:  # a peer died mid-collective: its own error says why
        fail(f"another process of the group stopped ({first_line(err)})")
    finally:
        dist.destroy_process_group()


def train(args, ddp):
    torch.manual_seed(args.seed)  # the initial weights: the same on every rank
    autocast = autocast_for(ddp.device, ddp.precision)
    (train_images, train_labels), (test_images, test_labels) = load_cifar10_once(args, ddp)
    if args.dry_run:
        train_images, train_labels = train_images[:16], train_labels[:16]
        test_images, test_labels = test_images[:16], test_labels[:16]
    say(
        ddp,
        f"data: {len(train_images)} training and {len(test_images)} test images, "
        f"each batch of {args.batch_size} split over {ddp.size} process(es)",
    )

    model = ConvNet().to(ddp.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    total_steps = args.epochs * math.ceil(len(train_images) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=total_steps)
    scaler = torch.amp.GradScaler(ddp.device.type, enabled=ddp.precision == "fp16")
    snapshot_path = args.out_dir / "snapshot.pt"
    history = load_snapshot(snapshot_path, model, optimizer, scheduler, args, ddp)
    resumed_from = len(history)
    if resumed_from:
        say(ddp, f"resuming from {snapshot_path}: epoch {resumed_from} of {args.epochs} was done")
    # DDP broadcasts rank 0's weights to every rank (so all start equal), and from now on
    # all-reduces the gradients during backward, overlapping that with the rest of backward.
    model = DistributedDataParallel(
        model, device_ids=[ddp.device] if ddp.device.type == "cuda" else None
    )

    counts = None
    for epoch in range(resumed_from + 1, args.epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = train_one_epoch(
            model,
            train_images,
            train_labels,
            optimizer,
            scheduler,
            scaler,
            autocast,
            epoch,
            args,
            ddp,
        )
        seconds = time.perf_counter() - start
        test_loss, test_acc, counts = evaluate(model, test_images, test_labels, autocast, ddp)
        history.append(dict(epoch=epoch, train_loss=train_loss, train_accuracy=train_acc))
        history[-1].update(test_loss=test_loss, test_accuracy=test_acc, seconds=seconds)
        if ddp.rank == 0:  # one writer: the ranks hold the same weights
            print(epoch_line(history[-1]))
            save_snapshot(snapshot_path, model.module, optimizer, scheduler, args, history)

    if counts is None:  # the snapshot held every epoch already: nothing was trained
        test_loss, test_acc, counts = evaluate(model, test_images, test_labels, autocast, ddp)
    if ddp.rank == 0:
        save_plots(history, args.out_dir)
        per_class = dict(zip(CLASSES, (counts.diag() / counts.sum(1).clamp(min=1)).tolist()))
        results = dict(test_loss=test_loss, test_accuracy=test_acc, per_class_accuracy=per_class)
        results.update(world_size=ddp.size, backend=ddp.backend, resumed_from_epoch=resumed_from)
        write_metrics(args, ddp.device, ddp.precision, history, **results)


# ------------------------------------------------------------------------------------------
# Plumbing: flags, the process group, errors, download, snapshots, plots. The lesson is above.
# ------------------------------------------------------------------------------------------


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
        choices=["auto", "nccl", "gloo"],
        default="auto",
        help="how processes talk (default auto: NCCL between GPUs, Gloo on CPUs)",
    )
    add(
        "--timeout",
        type=positive(int),
        default=300,
        help="seconds to wait for the other processes to join or answer (default 300)",
    )
    add_common_flags(p, data="cifar-10-batches-py/")
    args = p.parse_args(argv)
    if args.dry_run:  # one tiny batch through training and evaluation; no snapshot
        args.epochs, args.batch_size = 1, 16
    return args


def start_process_group(args):
    """Join the other processes; return this one's rank, device, precision and backend.

    torchrun tells every process who it is through environment variables: RANK (0 to
    WORLD_SIZE - 1 over all machines), LOCAL_RANK (on this machine) and where to meet
    (MASTER_ADDR:MASTER_PORT). Run as plain `python`, none is set: a group of one.
    """
    env = os.environ
    rank, size = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    local_rank, local_size = int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # torchrun and schedulers stop with SIGTERM
    # Each process computes on its share of the cores: more threads than cores only thrash.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    device, device_why = pick_device(args.device)
    if device.type == "mps":
        if args.device == "mps":
            fail(
                "--device mps: PyTorch has no distributed backend for Apple GPUs; use --device cpu"
            )
        device, device_why = torch.device("cpu"), "no distributed backend for Apple MPS"
    if device.type == "cuda":
        if local_size > torch.cuda.device_count():
            fail(
                f"{local_size} processes on this machine but {torch.cuda.device_count()} GPU(s): "
                f"use --nproc-per-node {torch.cuda.device_count()} (one process per GPU)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = (
        args.backend if args.backend != "auto" else "nccl" if device.type == "cuda" else "gloo"
    )
    if backend == "nccl" and device.type != "cuda":
        fail("--backend nccl needs CUDA GPUs: use --backend gloo (or auto) on the CPU")
    if not dist.is_backend_available(backend):
        fail(f"this PyTorch build has no {backend} backend: use --backend auto")
    precision, precision_why = pick_precision(args.precision, device)
    if "MASTER_ADDR" in env:
        store = rendezvous_store(env, rank, size, args.timeout)
    elif size == 1:
        store = dist.HashStore()  # a group of one: nothing to meet
    else:
        fail("WORLD_SIZE is set but MASTER_ADDR is not: start the processes with torchrun")
    try:
        dist.init_process_group(
            backend,
            store=store,
            rank=rank,
            world_size=size,
            timeout=timedelta(seconds=args.timeout),
        )
    except (RuntimeError, dist.DistError) as err:
        fail(
            f"the {size} processes did not all join ({first_line(err)}): start the same command on "
            "every machine, with the same --nnodes and --rdzv-endpoint, or raise --timeout"
        )
    if args.batch_size < size:
        fail(f"--batch-size {args.batch_size} is smaller than the {size} processes sharing it")
    ddp = argparse.Namespace(rank=rank, size=size, local_rank=local_rank, device=device)
    ddp.precision, ddp.backend = precision, backend
    say(ddp, f"device: {device} ({device_why}); precision: {precision} ({precision_why})")
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
        )
    except (RuntimeError, dist.DistError) as err:
        fail(
            f"could not reach {env['MASTER_ADDR']}:{env['MASTER_PORT']} ({first_line(err)}): "
            "check the address and that every machine runs the same command, or raise --timeout"
        )
    return dist.PrefixStore(f"round{env.get('TORCHELASTIC_RESTART_COUNT', 0)}", store)


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C


def say(ddp, message):
    """Print from rank 0 only: one line per event, not one per process."""
    if ddp.rank == 0:
        print(message, flush=True)


def load_cifar10_once(args, ddp):
    """Every rank's copy of the data; one process per machine downloads it while the others
    wait at a barrier, so they never write the same files at once."""
    if ddp.local_rank != 0:
        dist.barrier()
    data = load_cifar10(args.data_dir, ddp.device)
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
        fail(f"{archive} failed its MD5 check (corrupt or partial download): delete it, run again")
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        download = not (data_dir / CIFAR10.base_folder).exists()
        splits = [CIFAR10(str(data_dir), train=train, download=download) for train in (True, False)]
    # No network, a broken connection, unpacked files failing their MD5 check:
    except (OSError, RuntimeError) as err:
        fail(
            f"could not get CIFAR-10 ({first_line(err)}). Download {CIFAR10.url} by hand "
            f"and put it in {data_dir}/ (or unpack it there as {CIFAR10.base_folder}/)"
        )
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
    tensors = []
    for split in splits:
        images = torch.from_numpy(split.data).to(device).permute(0, 3, 1, 2)  # NHWC -> NCHW
        images = (images.float().div(255) - mean) / std
        # channels_last (NHWC in memory) is the layout the fast CPU and CUDA convolutions prefer;
        # several MPS kernels do not support it.
        if device.type != "mps":
            images = images.contiguous(memory_format=torch.channels_last)
        tensors.append((images, torch.tensor(split.targets, device=device)))
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
    state.update(scheduler=scheduler.state_dict(), settings=settings(args))
    state.update(rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state_all())
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def load_snapshot(path, model, optimizer, scheduler, args, ddp):
    """Load the snapshot at `path` into model, optimizer and scheduler, if there is one;
    return its history (the epochs done), or [] to start afresh."""
    if args.dry_run or not path.is_file():
        return []
    try:
        state = torch.load(path, map_location=ddp.device, weights_only=True)
        saved = state["settings"]
        if saved != settings(args):
            differ = [
                f"--{k.replace('_', '-')} {saved[k]}"
                for k in saved
                if saved[k] != settings(args)[k]
            ]
            fail(
                f"{path} was made with {', '.join(differ)}: run with those, or delete it (or give "
                "another --out-dir) to start afresh"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        if ddp.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
    except Exception as err:  # empty, truncated, not a torch file, or another script's file
        fail(
            f"{path} is not a snapshot of this script ({first_line(err)}): "
            "delete it to start afresh"
        )
    return state["history"]


def save_plots(history, out_dir):
    """curves.png: loss and accuracy per epoch, training and test."""
    out_dir.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: augmented, during the epoch)")
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
