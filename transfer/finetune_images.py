"""Transfer learning: start from a trained network, learn new classes from a few images each.

A trained network's features (edges, textures, parts of things) describe other pictures too: keep
that part, the backbone, give it a new last layer for your classes, and train the new layer alone
(--mode probe) or all of it, the backbone more slowly (--mode finetune). From a few images a class
it beats the same network from random weights (--mode scratch). The default run trains
resnet_cifar.py's ResNet (code copied here) on CIFAR-10's first five classes, learns the other five
from 10, 50 and 250 images each, and tests on their 5,000 test images: at 50 a class about 0.84
fine-tuned, 0.75 probed, 0.71 from scratch (transfer/README.md), in 6 minutes on a 2-core CPU.
    python transfer/finetune_images.py              # the default run: a backbone, then the table
    python transfer/finetune_images.py --backbone runs/resnet_cifar/model.pt --image-folder DIR
    python transfer/finetune_images.py --predict photo.jpg more_photos/   # the top 3 guesses
Writes metrics.json, curves.png, model.pt (the last model trained; loaded with build(), below)
and, in the default run, backbone.pt (a model.pt of resnet_cifar.py) into --out-dir.
    checkpoint = torch.load("runs/finetune_images/model.pt", weights_only=True)
    model = build(checkpoint["config"])
    model.load_state_dict(checkpoint["weights"])
"""

import argparse
import contextlib
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path
from signal import SIGINT, signal

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset, random_split
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.transforms import ToTensor
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
CIFAR10_CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The default run: a backbone of the first five classes (resnet_cifar.py's width and recipe,
# without shifts, for fewer epochs), new models of the other five.
OLD, NEW, IMAGES_PER_CLASS, MODES = range(5), range(5, 10), (10, 50, 250), "scratch probe finetune"
WIDTHS, EPOCHS, BACKBONE_BATCH, BACKBONE_LR = (16, 32, 64, 128), 8, 256, 0.4
# Each new model: STEPS steps of BATCH_SIZE images; fine-tuned, its backbone learns at
# BACKBONE_SHARE of the new layer's rate, LR. The ResNet scales its outputs by LOGIT_SCALE;
# ResNet-18 does not, and takes PyTorch's tutorial's rate for 4 images (0.001) times 64 / 4.
STEPS, BATCH_SIZE, BACKBONE_SHARE, LR = 300, 64, 0.3, dict(resnet_cifar=0.4, resnet18=0.016)
LOGIT_SCALE, LABEL_SMOOTHING, MOMENTUM, WEIGHT_DECAY = 0.125, 0.2, 0.9, 5e-4
IMAGENET = ResNet18_Weights.DEFAULT


# resnet_cifar.py's network, the same layers and names so that its model.pt loads: explained there.
def conv_bn(c_in, c_out, batch_norm=True, pool=False):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm),
        nn.MaxPool2d(2) if pool else nn.Identity(),
        nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    def __init__(self, channels, batch_norm=True, skip=True):
        super().__init__()
        self.f = nn.Sequential(*(conv_bn(channels, channels, batch_norm) for _ in range(2)))
        self.skip = skip

    def forward(self, x):
        return x + self.f(x) if self.skip else self.f(x)


class ResNet(nn.Module):
    def __init__(self, num_classes, mean, std, widths, batch_norm=True, residual=True):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))
        layers = [conv_bn(3, widths[0], batch_norm)]
        for stage, (c_in, c_out) in enumerate(zip(widths, widths[1:]), 1):
            layers.append(conv_bn(c_in, c_out, batch_norm, pool=True))
            layers += [Residual(c_out, batch_norm, residual)] if stage in (1, 3) else []
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, images):
        # All but the last layer is the backbone: it turns an image into 128 features (how strongly
        # each channel's pattern occurs in it); the classifier weighs them into class scores.
        features = self.layers((images - self.mean) / self.std).amax((2, 3))
        return self.classifier(features) * LOGIT_SCALE


def new_model(pretrained, mode, num_classes, device):
    """The network a mode trains and its config: pretrained's backbone, a new last layer."""
    config = dict(pretrained["config"], num_classes=num_classes)
    model = build(config)
    if mode != "scratch":
        # The old last layer scores the old classes: a new one, random, takes its place.
        kept = {k: w for k, w in pretrained["weights"].items() if not k.startswith("classifier.")}
        model.load_state_dict(kept, strict=False)
    # Probing freezes the backbone: no gradient is computed for it, its weights never change.
    model.requires_grad_(mode != "probe").classifier.requires_grad_(True)
    return model.to(device), config


def train_one_epoch(model, loader, optimizer, scheduler, amp, frozen):
    """One pass over the loader: accuracy and mean loss, as trained (amp: conv_net_cifar.py)."""
    # A frozen backbone stays in eval mode: its batch norm layers keep normalising with the
    # averages of the images they were trained on. In train mode they would use each batch's own
    # mean and variance, and update the averages: the features would drift from batch to batch.
    model.train(not frozen)
    (autocast, scaler), device = amp, next(model.parameters()).device
    total_loss = correct = seen = 0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for images, labels in tqdm(loader, disable=None):
        images, labels = images.to(device), labels.to(device)
        # Each image mirrored with probability 1/2 (resnet_cifar.py's augmentation, less shifts).
        images = torch.where(torch.rand_like(images[:, :1, :1, :1]) < 0.5, images.flip(3), images)
        with autocast:
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=LABEL_SMOOTHING)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    accuracy, loss = (torch.stack([correct, total_loss]).float() / seen).tolist()
    return dict(train_accuracy=accuracy, train_loss=loss)


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, test_set, autocast):
    model.eval()
    correct = 0
    for images, labels in DataLoader(test_set, 500):
        with autocast:
            correct += (model(images).argmax(1) == labels).sum()
    return dict(test_accuracy=int(correct) / len(test_set))


def fit(model, lrs, train_set, test_set, batch_size, epochs, amp, steps=None):
    """Yield each epoch's figures; backbone and classifier at peak rates lrs (None: frozen)."""
    rest = [w for name, w in model.named_parameters() if not name.startswith("classifier.")]
    parts = rest, model.classifier.parameters()
    groups = [dict(params=part, lr=lr) for part, lr in zip(parts, lrs) if lr]
    # channels_last: the layout fast CPU and CUDA convolutions prefer (not an Apple GPU's).
    if next(model.parameters()).device.type != "mps":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(groups, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    batch_size = min(batch_size, len(train_set))
    # Passes over train_set (or `steps` batches, however few the images) in random orders, each
    # batch sliced from the tensors at once (feedforward_1_hid_nn.py explains).
    order = RandomSampler(train_set, num_samples=steps and steps * batch_size)
    loader = DataLoader(train_set, sampler=BatchSampler(order, batch_size, False), batch_size=None)
    peaks, total = [group["lr"] for group in groups], epochs * len(loader)
    scheduler = OneCycleLR(optimizer, peaks, total, pct_start=0.25, cycle_momentum=False)
    for _ in range(epochs):
        start = time.perf_counter()
        figures = train_one_epoch(model, loader, optimizer, scheduler, amp, not lrs[0])
        figures.update(evaluate(model, test_set, amp[0]), seconds=time.perf_counter() - start)
        yield figures


def main(argv=None):
    args = parse_args(argv)
    # The same seed: the same images chosen, weights and batches, the same result on one CPU.
    torch.manual_seed(args.seed)
    pick_device_and_precision(args)
    if args.predict:
        return predict(args.predict, args.out_dir / "model.pt", args.device)
    # Mixed precision, as conv_net_cifar.py explains.
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    autocast = torch.autocast(args.device.type, dtype, enabled=args.precision != "fp32")
    amp = autocast, torch.amp.GradScaler(args.device.type, enabled=args.precision == "fp16")
    # A dry run: 2 images a class to learn from and to test on (3 for a backbone), 8 steps.
    few, history = (2 if args.dry_run else None), []
    pretrained = args.backbone and load_model(args.backbone)
    if args.dry_run:
        args.epochs, args.steps, args.images_per_class = 1, min(args.steps, 8), [2]
    if args.image_folder:
        pixels = pretrained["config"].get("size", 32)
        (train_set, test_set), classes = load_image_folder(args.image_folder, args.seed, pixels)
        new, counts = range(len(classes)), args.images_per_class or [None]
    else:
        (train_set, test_set), classes = load_cifar10(args.data_dir), list(CIFAR10_CLASSES[5:])
        new, counts = NEW, args.images_per_class or IMAGES_PER_CLASS
    if pretrained is None:
        # resnet_cifar.py's ResNet and recipe (less the shifts, 8 epochs) on the old classes; the
        # model normalises its input with their training images' mean and std per channel.
        old = [pick(s, OLD, few and 3, args.seed, args.device) for s in (train_set, test_set)]
        mean, std = [f(old[0].tensors[0], (0, 2, 3)).tolist() for f in (torch.mean, torch.std)]
        config = dict(num_classes=len(OLD), mean=mean, std=std, widths=WIDTHS)
        model = build(config).to(args.device)
        lrs = BACKBONE_LR, BACKBONE_LR
        for epoch, figures in enumerate(fit(model, lrs, *old, BACKBONE_BATCH, args.epochs, amp)):
            figures = {k.replace("test_", "backbone_test_"): v for k, v in figures.items()}
            log_epoch(history, epoch=epoch + 1, **figures)
        # CPU tensors: a model.pt loads on any machine, with or without the GPU it was trained on.
        weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
        pretrained = dict(weights=weights, config=config, classes=list(CIFAR10_CLASSES[:5]))
        args.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(pretrained, args.out_dir / "backbone.pt")
    test_set, table = pick(test_set, new, few, args.seed, args.device), {}
    for count in counts:
        subset = pick(train_set, new, count, args.seed, args.device)
        n = count or len(subset) // len(classes)
        for mode in args.mode:
            model, config = new_model(pretrained, mode, len(classes), args.device)
            # Fine-tuned, the backbone starts trained and the new layer random: a smaller rate keeps
            # large early updates from undoing its features (README measures how much smaller).
            share = dict(scratch=1.0, probe=None, finetune=BACKBONE_SHARE)[mode]
            lrs = share and args.lr * share, args.lr
            print(f"{mode}  ", end="")
            (figures,) = fit(model, lrs, subset, test_set, args.batch_size, 1, amp, args.steps)
            log_epoch(history, images_per_class=n, **figures)
            history[-1]["mode"], table.setdefault(mode, {})[n] = mode, figures["test_accuracy"]
    print("images per class" + "".join(f"{m:>10s}" for m in table) + "  (test accuracy)")
    for row in table[mode]:
        print(f"{row:16d}" + "".join(f"{table[m][row]:10.3f}" for m in table))
    write_metrics(args, history, test_accuracy=table[mode][n], table=table, classes=classes)
    save_plots(table, args.out_dir)
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    torch.save(dict(weights=weights, config=config, classes=classes), args.out_dir / "model.pt")


@torch.no_grad()
def predict(paths, model_path, device):
    """Print the saved model's 3 likeliest classes, and their chances, for each image given."""
    checkpoint = load_model(model_path)
    model, classes = build(checkpoint["config"]), checkpoint["classes"]
    model.load_state_dict(checkpoint["weights"])
    model.to(device).eval()
    listed = [(given, sorted(given.iterdir()) if given.is_dir() else [given]) for given in paths]
    for path in [f for given, fs in listed for f in fs if not given.is_dir() or is_image_file(f)]:
        image = ToTensor()(open_image(path, checkpoint["config"].get("size", 32))).to(device)
        top = model(image[None]).float().softmax(1)[0].cpu().topk(min(3, len(classes)))
        print(f"{path}: " + ", ".join(f"{classes[k]} {chance:.3f}" for chance, k in zip(*top)))


# ---- plumbing: flags, data, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--backbone", help="a resnet_cifar.py model.pt, or resnet18 (ImageNet's); none: train one")
    add("--mode", nargs="+", choices=MODES.split(), default=MODES.split(), help="(default: all)")
    add("--images-per-class", nargs="+", type=positive(int), help="of each class (10 50 250; all)")

    def number(flag, default, text):
        add(flag, type=positive(int), default=default, help=f"{text} (default {default})")

    number("--steps", STEPS, "training steps of each new model")
    number("--epochs", EPOCHS, "passes over the first 5 CIFAR-10 classes to train a backbone")
    number("--batch-size", BATCH_SIZE, "images per step of a new model (a backbone's: 256)")
    add("--lr", type=positive(float), help="new layer's peak rate (default 0.4; resnet18 0.016)")
    add("--image-folder", type=Path, help="learn DIR/train/<class>/* (and DIR/test/) instead")
    add("--predict", action="extend", nargs="+", type=Path, metavar="IMAGE", help="top 3 guesses")
    args = parse_with_common_flags(p, argv, data="cifar-10-batches-py/")
    changed = {f for f in vars(args) if getattr(args, f) != p.get_default(f)}
    if args.predict and changed - {"predict", "seed", "device", "precision", "out_dir"}:
        p.error("--predict uses the saved model: drop the training flags")
    if args.backbone and "epochs" in changed:
        p.error("--epochs trains the backbone: with --backbone, leave it out")
    if args.image_folder and (not args.backbone or "data_dir" in changed):
        p.error("--image-folder: give --backbone (a model.pt or resnet18), not --data-dir")
    args.lr = args.lr or LR["resnet18" if args.backbone == "resnet18" else "resnet_cifar"]
    return args


def build(config, pretrained=False):
    """A network from the config saved beside its weights, random (or ImageNet's: pretrained). In
    ResNet-18: the preparation its weights want (the middle 224 x 224, ImageNet's mean, std)."""
    if config.get("torchvision") != "resnet18":
        return ResNet(**config)
    net = resnet18(weights=IMAGENET if pretrained else None)
    net.fc, classifier = nn.Identity(), nn.Linear(512, config["num_classes"])
    return nn.Sequential(OrderedDict(prepare=IMAGENET.transforms(), net=net, classifier=classifier))


def load_model(name):
    """The checkpoint to start from: a model.pt (checked), or ImageNet's ResNet-18 ("resnet18")."""
    if name == "resnet18":
        # Images are read at 256 x 256 (CIFAR-10's ResNet: 32 x 32); ResNet-18 sees the middle.
        config, meta = dict(torchvision="resnet18", num_classes=1000, size=256), IMAGENET.meta
        try:
            weights = build(config, pretrained=True).state_dict()
        except (OSError, RuntimeError, EOFError) as err:
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            sys.exit(f"error: could not get ResNet-18 ({err!r}): put {IMAGENET.url} in {cache}/")
        return dict(weights=weights, config=config, classes=meta["categories"])
    if not Path(name).is_file():
        sys.exit(f"error: no model at {name}: train one first (python resnet_cifar.py, or this)")
    try:
        checkpoint = torch.load(name, weights_only=True)
        build(checkpoint["config"]).load_state_dict(checkpoint["weights"])
        return dict(checkpoint, classes=list(checkpoint["classes"]))
    # Empty, truncated, not a torch file, or another script's checkpoint: one line.
    except Exception as err:
        sys.exit(f"error: {name} is not a model.pt of resnet_cifar.py or this script ({err!r})")


def pick(dataset, keep, per_class, seed, device):
    """The images of the classes in keep, labelled 0, 1, ...: per_class random ones, or all."""
    (images, labels), generator = dataset.tensors, torch.Generator().manual_seed(seed)
    chosen = [(labels == c).nonzero().flatten() for c in keep]
    chosen = [i[torch.randperm(len(i), generator=generator)[:per_class]] for i in chosen]
    new_labels = [torch.full((len(i),), k) for k, i in enumerate(chosen)]
    return TensorDataset(images[torch.cat(chosen)].to(device), torch.cat(new_labels).to(device))


def load_cifar10(data_dir):
    """CIFAR-10's training and test sets: (N, 3, 32, 32) pixels in [0, 1] and labels, on the CPU."""
    try:
        sets = [CIFAR10(data_dir, train, download=True) for train in (True, False)]
    except (OSError, RuntimeError, EOFError) as err:
        sys.exit(f"error: could not get CIFAR-10 ({err!r}): unpack {CIFAR10.url} in {data_dir}/")
    # The files hold (N, height, width, channel) bytes; PyTorch wants (N, C, H, W).
    images = [torch.from_numpy(s.data).permute(0, 3, 1, 2).float().div(255) for s in sets]
    return [TensorDataset(x, torch.tensor(s.targets)) for x, s in zip(images, sets)]


def load_image_folder(folder, seed, pixels):
    """([training, test] TensorDatasets, class names) of folder/train/<class>/* and folder/test/,
    or a seeded fifth of train/ if there is none, every image decoded once."""
    parts = [folder / part for part in ("train", "test") if (folder / part).is_dir()]
    if folder / "train" not in parts:
        sys.exit(f"error: no {folder}/train/ folder: --image-folder wants DIR/train/<class>/*")
    try:
        how = dict(loader=lambda path: open_image(path, pixels), is_valid_file=is_image_file)
        found = [ImageFolder(part, ToTensor(), **how) for part in parts]
    # A class folder without images (a hidden one: .ipynb_checkpoints), an unreadable folder:
    except OSError as err:
        sys.exit(f"error: {folder}: {err}")
    classes = found[0].classes
    # A test/ folder with other class folders would number its classes differently.
    if found[-1].classes != classes:
        sys.exit(f"error: {folder}: test/ has classes {found[1].classes}, train/ {classes}")
    if len(found) == 1:
        print(f"no {folder}/test/ folder: a fifth of train/ (seeded) is the test set")
        found = random_split(found[0], [0.8, 0.2], torch.Generator().manual_seed(seed))
    sets = [TensorDataset(*(torch.cat(t) for t in zip(*DataLoader(f, 256)))) for f in found]
    return sets, classes


def open_image(path, pixels):
    """An image file as an RGB image of pixels x pixels; a missing file or a non-image: one line."""
    try:
        return Image.open(path).convert("RGB").resize((pixels, pixels))
    except OSError as err:
        sys.exit(f"error: cannot read {path} as an image ({err!r})")


def is_image_file(path):
    """An image extension torchvision reads; not hidden (.DS_Store), nor in a hidden folder."""
    name, folder = Path(path).name, Path(path).parent.name
    return Path(path).suffix.lower() in IMG_EXTENSIONS and "." not in (name[:1], folder[:1])


def save_plots(table, out_dir):
    """curves.png: each mode's test accuracy by the number of training images per class."""
    for mode, row in table.items():
        plt.plot(list(row), list(row.values()), marker="o", label=mode)
    plt.gca().set(xscale="log", xlabel="training images per class", ylabel="test accuracy")
    plt.legend(title="new classes")
    plt.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")
    plt.close()


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
