"""A small residual network that takes CIFAR-10 from conv_net_cifar.py's 71% to 90%, on a CPU.

Model:  David Page's ResNet-9 at a quarter of its width (412,944 weights): every layer is a 3x3
        convolution -> batch norm -> ReLU. A stem layer, then three stages, each a layer that
        widens the channels with a 2x2 max-pool that halves the picture; stages 1 and 3 end with
        a residual block (two more layers, whose output is added to their input). Channels
        3 -> 16 -> 32 -> 64 -> 128, pictures 32 -> 32 -> 16 -> 8 -> 4; then the largest value of
        each channel -> one logit per class.
Recipe: the ingredients (--without takes any of them out; CIFAR.md measures what each is worth):
        batch norm, residual connections, random flips and 2-pixel shifts made on the device,
        label smoothing, a one-cycle learning rate, Nesterov momentum, weight decay,
        channels_last, and test-time augmentation (six versions of each test image).
Data:   CIFAR-10 as in conv_net_cifar.py, or --image-folder DIR with your own images.
Expect: CIFAR-10 test accuracy 0.903 (0.9025 to 0.9045 with seeds 0, 1, 2) after the default 11
        epochs, in 11 minutes from start to end and 2.2 GB of memory on a 2-core CPU without
        native bf16 (fp32; CIFAR.md). Chance is 0.10; conv_net_cifar.py reaches 0.71.

Run:
    python resnet_cifar.py                          # train on CIFAR-10 with the defaults
    python resnet_cifar.py --dry-run                # a tiny run: checks the set-up
    python resnet_cifar.py --without tta label-smoothing    # the same, minus two ingredients
    python resnet_cifar.py --image-folder DIR --epochs 30
    python resnet_cifar.py --predict photo.jpg more_photos/  # the saved model's top 3 guesses

Prints the accuracy of every class, and writes metrics.json, curves.png, predictions.png,
confusion_matrix.png and model.pt into --out-dir. model.pt holds CPU tensors, the class names and
the normalisation: it loads on any machine, and --predict needs nothing else. To use it in code:
    checkpoint = torch.load("runs/resnet_cifar/model.pt", weights_only=True)
    model = ResNet(**checkpoint["config"])
    model.load_state_dict(checkpoint["weights"])
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from signal import SIGINT, signal

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset, random_split
from torchvision.datasets import CIFAR10, ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import ToTensor
from tqdm import tqdm

HERE = Path(__file__).resolve().parent
# In this repository data/ and runs/ are the top-level ones; a copy elsewhere keeps its own.
TOP = next((d for d in (HERE, HERE.parent) if (d / "data" / "README.md").is_file()), HERE)
# The network's input; an image folder's pictures are converted and resized to it.
CHANNELS, SIZE = 3, 32
CIFAR10_CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# An image folder this large or larger is read from disk every epoch instead of held in memory.
IN_MEMORY_LIMIT_MB = 2000
# The stem's width (the first layer, before the stages), then each stage's; which stages end
# with a residual block.
WIDTHS, RESIDUAL_STAGES = (16, 32, 64, 128), (1, 3)
# The recipe's numbers: Page's ResNet-9 recipe, with what 15 minutes of a CPU allows.
EPOCHS, BATCH_SIZE, LR, MOMENTUM, WEIGHT_DECAY = 11, 256, 0.4, 0.9, 5e-4
LABEL_SMOOTHING, SHIFT = 0.2, 2
# The logits are divided by 8, as in Page's ResNet-9: fed the largest value of each channel, the
# last layer starts with large outputs, and confident wrong guesses slow the start of training.
LOGIT_SCALE = 0.125
INGREDIENTS = (
    "batch-norm residual flip shift label-smoothing one-cycle nesterov weight-decay "
    "channels-last tta"
).split()


def conv_bn(c_in, c_out, batch_norm=True, pool=False):
    """The layer everything here is made of: 3x3 convolution -> batch norm -> ReLU; with
    pool=True a 2x2 max-pool after the convolution halves the picture."""
    # Batch norm rescales each channel of the batch to mean 0 and variance 1 (then learns its own
    # scale and shift): every layer's input keeps a steady scale while the weights before it
    # change, so a high learning rate trains. Its shift makes a convolution bias redundant.
    # model.train() normalises with the batch's own mean and variance and keeps running averages
    # of them; model.eval() uses those averages, so an image gets the same answer whatever else
    # is in its batch (--predict asks about one image at a time).
    # Pooling before batch norm and ReLU leaves them a quarter of the pixels to work on: less
    # time an epoch than pooling last.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm),
        nn.MaxPool2d(2) if pool else nn.Identity(),
        nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
        # inplace=True: ReLU overwrites its input instead of making a copy (less memory).
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """Two layers whose output is added to their input: x + f(x). skip=False leaves out the
    "+ x" (the same two layers, plainly stacked: --without residual)."""

    def __init__(self, channels, batch_norm=True, skip=True):
        super().__init__()
        self.f = nn.Sequential(
            conv_bn(channels, channels, batch_norm), conv_bn(channels, channels, batch_norm)
        )
        self.skip = skip

    def forward(self, x):
        # The block learns a correction to x rather than a new picture, and the gradient reaches
        # the layers before it through the "+ x" unchanged, however deep the net.
        return x + self.f(x) if self.skip else self.f(x)


class ResNet(nn.Module):
    def __init__(
        self,
        num_classes=10,
        mean=(0.5,) * CHANNELS,
        std=(0.25,) * CHANNELS,
        widths=WIDTHS,
        batch_norm=True,
        residual=True,
    ):
        super().__init__()
        # The training images' mean and std per channel, saved with the weights in model.pt:
        # whoever uses the model feeds it plain [0, 1] pixels.
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1))
        # The stem: one layer on the whole 32x32 picture, before the stages halve it.
        layers = [conv_bn(CHANNELS, widths[0], batch_norm)]
        for stage, (c_in, c_out) in enumerate(zip(widths, widths[1:]), 1):
            # Widen, then halve the picture: (N, c_in, S, S) -> (N, c_out, S/2, S/2).
            layers.append(conv_bn(c_in, c_out, batch_norm, pool=True))
            if stage in RESIDUAL_STAGES:
                layers.append(Residual(c_out, batch_norm, skip=residual))
        self.layers = nn.Sequential(*layers)
        # After the stages each channel is a 4x4 map; its largest value says how strongly the
        # channel's pattern occurs anywhere in the picture.
        self.classifier = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, images):
        x = self.layers((images - self.mean) / self.std)
        return self.classifier(x.amax((2, 3))) * LOGIT_SCALE


def augment(images, flip=True, shift=True):
    """A random variant of each image, made on the device: mirrored left-right (each with
    probability 1/2), and moved by up to SHIFT pixels each way, the border filled with its mirror
    image. The labels do not change: a mirrored cat, or one a little to the left, is still a cat."""
    n, device = len(images), images.device
    if flip:
        mirrored = torch.rand(n, device=device) < 0.5
        images = torch.where(mirrored.view(-1, 1, 1, 1), images.flip(3), images)
    if shift:
        padded = F.pad(images, (SHIFT,) * 4, mode="reflect")
        # Each image's window into its padded copy: rows dy..dy+SIZE-1, columns dx..dx+SIZE-1,
        # with dy, dx from 0 to 2*SHIFT (SHIFT: not moved). One offset pair per image, shaped
        # (n, 1, 1, 1) so that it broadcasts over channels, rows and columns.
        dy, dx = torch.randint(0, 2 * SHIFT + 1, (2, n, 1, 1, 1), device=device)
        span = torch.arange(SIZE, device=device)
        rows, cols = dy + span.view(1, 1, -1, 1), dx + span.view(1, 1, 1, -1)
        # Four index tensors that broadcast to (n, channels, SIZE, SIZE): image, channel, row,
        # column of the padded batch to take each output pixel from.
        index = torch.arange(n, device=device).view(-1, 1, 1, 1)
        channel = torch.arange(images.shape[1], device=device).view(1, -1, 1, 1)
        images = padded[index, channel, rows, cols]
    return images


def train_one_epoch(model, loader, optimizer, scheduler, amp, recipe):
    """One pass over the training set: its accuracy and mean loss, as trained. `amp` is the pair
    (autocast, scaler) that conv_net_cifar.py explains; `recipe` the names of the ingredients in
    use (main() drops those --without names)."""
    model.train()
    autocast, scaler = amp
    total_loss = correct = 0
    device = next(model.parameters()).device
    memory_format = torch.channels_last if "channels-last" in recipe else torch.contiguous_format
    smoothing = LABEL_SMOOTHING if "label-smoothing" in recipe else 0.0
    # disable=None: a progress bar on a terminal only, not in a log file.
    for images, labels in tqdm(loader, disable=None):
        images, labels = images.to(device), labels.to(device)
        images = augment(images, "flip" in recipe, "shift" in recipe)
        with autocast:
            logits = model(images.contiguous(memory_format=memory_format))
            # Label smoothing: with CIFAR-10's 10 classes the target is 1 - 0.2 + 0.2/10 = 0.82
            # on the true class and 0.2/10 = 0.02 on each of the others, not 1 and 0. The net
            # stops pushing its logits ever further apart on images it already gets right, which
            # overfits less. (The loss cannot fall below 0.87 then, the entropy of that target.)
            loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
    accuracy = int(correct) / len(loader.dataset)
    loss = float(total_loss) / len(loader.dataset)
    return dict(train_accuracy=accuracy, train_loss=loss)


def tta_versions(images):
    """Test-time augmentation's six versions of a batch: the images and their mirror images, each
    also moved one pixel down and right, and one pixel up and left (the border mirrored)."""
    for batch in (images, images.flip(3)):
        padded = F.pad(batch, (1, 1, 1, 1), mode="reflect")
        yield from (batch, padded[..., :SIZE, :SIZE], padded[..., 2:, 2:])


# No gradients are needed to evaluate: faster, and less memory.
@torch.no_grad()
def evaluate(model, loader, autocast, tta=False):
    """Test accuracy and loss, and every test image's predicted class (on the device).
    Test-time augmentation (tta): the model sees each image in six versions, tta_versions(), and
    their logits are averaged: the errors of the versions partly cancel, for six times the time."""
    model.eval()
    device = next(model.parameters()).device
    total_loss = correct = 0
    predictions = []
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with autocast:
            if tta:
                logits = torch.stack([model(v).float() for v in tta_versions(images)]).mean(0)
            else:
                logits = model(images).float()
        total_loss += F.cross_entropy(logits, labels, reduction="sum")
        predictions.append(logits.argmax(1))
        correct += (predictions[-1] == labels).sum()
    accuracy = int(correct) / len(loader.dataset)
    loss = float(total_loss) / len(loader.dataset)
    return dict(test_accuracy=accuracy, test_loss=loss), torch.cat(predictions)


def main(argv=None):
    args = parse_args(argv)
    # The same seed, the same weights, augmentations and batch order: the same result on the
    # same CPU (GPU runs differ slightly from run to run: some GPU kernels add in a varying order).
    torch.manual_seed(args.seed)
    pick_device_and_precision(args)
    model_path = args.checkpoint or args.out_dir / "model.pt"
    if args.predict:
        return predict(args.predict, model_path, args.device)
    recipe = [name for name in INGREDIENTS if name not in args.without]
    # Several MPS kernels do not support channels_last.
    if args.device.type == "mps" and "channels-last" in recipe:
        recipe.remove("channels-last")
    left_out = f"; without {' '.join(args.without)}" if args.without else ""
    print(f"recipe: {' '.join(recipe) or 'none of the ingredients'}{left_out}")
    # Mixed precision, as conv_net_cifar.py explains: bf16 where the hardware has it natively,
    # fp16 with a GradScaler on older CUDA GPUs, else fp32.
    dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
    autocast = torch.autocast(args.device.type, dtype, enabled=args.precision != "fp32")
    scaler = torch.amp.GradScaler(args.device.type, enabled=args.precision == "fp16")

    if args.image_folder:
        (train_set, test_set), classes = load_image_folder(
            args.image_folder, args.seed, args.device
        )
    else:
        (train_set, test_set), classes = load_cifar10(args.data_dir, args.device), CIFAR10_CLASSES
    if args.dry_run:
        # One epoch of 16 random images (seeded): several classes, whatever the files' order.
        args.epochs = 1
        train_set, test_set = (a_few(s, 16) for s in (train_set, test_set))
    print(f"data: {len(train_set)} training, {len(test_set)} test images; {len(classes)} classes")
    train_loader, test_loader = batches(train_set, args, shuffle=True), batches(test_set, args)

    # The training images' mean and std per channel (from up to 5,000 of them), for the model
    # to normalise its inputs with.
    sample = next(iter(DataLoader(train_set, batch_size=5000, shuffle=True)))[0]
    mean, std = sample.mean((0, 2, 3)).tolist(), sample.std((0, 2, 3)).tolist()
    config = dict(num_classes=len(classes), mean=mean, std=std)
    config.update(widths=WIDTHS, batch_norm="batch-norm" in recipe, residual="residual" in recipe)
    model = ResNet(**config).to(args.device)
    # channels_last: in memory, the channels of a pixel side by side (N, H, W, C order, "NHWC")
    # instead of one whole picture per channel (NCHW): the layout the fast CPU and CUDA
    # convolutions prefer. The same computation, in another order: results differ by rounding.
    if "channels-last" in recipe:
        model = model.to(memory_format=torch.channels_last)
    # Nesterov momentum takes the gradient at the point momentum is about to carry the weights
    # to, a look ahead that damps the overshoots of a high learning rate.
    optimizer = torch.optim.SGD(
        model.parameters(),
        args.lr,
        momentum=MOMENTUM,
        nesterov="nesterov" in recipe,
        weight_decay=WEIGHT_DECAY if "weight-decay" in recipe else 0.0,
    )
    # One-cycle: the rate climbs from lr/25 to lr over the first quarter of the steps, then
    # falls ("anneals") to lr/25/1e4, both along half a cosine wave. Without it, the rate stays
    # at lr (a learner's first guess). The momentum stays at MOMENTUM (cycle_momentum=False):
    # the step size alone follows the cycle.
    steps = args.epochs * len(train_loader)
    if "one-cycle" in recipe:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            args.lr,
            total_steps=steps,
            pct_start=0.25,
            div_factor=25,
            final_div_factor=1e4,
            anneal_strategy="cos",
            cycle_momentum=False,
        )
    else:
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    if steps < 300 and not args.dry_run:
        print(f"note: only {steps} training steps; the defaults suit CIFAR-10: try more --epochs")

    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        train_figures = train_one_epoch(
            model, train_loader, optimizer, scheduler, (autocast, scaler), recipe
        )
        seconds = time.perf_counter() - start
        # Each epoch's test figures without test-time augmentation (a sixth of the time); after
        # the last epoch the model is evaluated once more, with it.
        test_figures, predictions = evaluate(model, test_loader, autocast)
        log_epoch(history, epoch=epoch, **train_figures, **test_figures, seconds=seconds)

    without_tta = test_figures["test_accuracy"]
    if "tta" in recipe:
        test_figures, predictions = evaluate(model, test_loader, autocast, tta=True)
        print(f"with test-time augmentation: test accuracy {test_figures['test_accuracy']:.4f}")
    per_class = report_classes(predictions, test_loader, classes, args.out_dir)
    write_metrics(
        args,
        history,
        **test_figures,
        test_accuracy_without_tta=without_tta,
        per_class_accuracy=per_class,
        recipe=recipe,
    )
    save_plots(history, model, test_set, classes, args.out_dir)
    # CPU tensors: model.pt loads on any machine, with or without the GPU it was trained on.
    weights = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
    checkpoint = dict(weights=weights, config=config, classes=list(classes))
    model_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, model_path)


@torch.no_grad()
def predict(paths, model_path, device):
    """Print the saved model's three likeliest classes, with their probabilities, for each image
    file given, and for every image in each folder given (with test-time augmentation)."""
    model, classes = load_checkpoint(model_path, device)
    for path in image_files(paths):
        # The same conversion as for training: any size and colour mode -> (CHANNELS, SIZE, SIZE).
        image = ToTensor()(open_image(path)).unsqueeze(0).to(device)
        logits = torch.stack([model(v).float() for v in tta_versions(image)]).mean(0)
        probabilities = logits.softmax(1)[0]
        top = probabilities.topk(min(3, len(classes)))
        guesses = ", ".join(
            f"{classes[k]} {chance:.3f}"
            for chance, k in zip(top.values.tolist(), top.indices.tolist())
        )
        print(f"{path}: {guesses}")


# ---- plumbing: flags, data, plots (the lesson is above) ----


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = p.add_argument
    add(
        "--epochs",
        type=positive(int),
        default=EPOCHS,
        help=f"passes over the training set (default {EPOCHS})",
    )
    add(
        "--batch-size",
        type=positive(int),
        default=BATCH_SIZE,
        help=f"images per step (default {BATCH_SIZE})",
    )
    add("--lr", type=positive(float), default=LR, help=f"peak learning rate (default {LR})")
    add(
        "--without",
        nargs="+",
        default=[],
        choices=INGREDIENTS,
        metavar="INGREDIENT",
        help=f"train without these ingredients of the recipe: {', '.join(INGREDIENTS)}",
    )
    add("--image-folder", type=Path, help="train on DIR/train/<class>/* (and DIR/test/) instead")
    add(
        "--predict",
        action="extend",
        nargs="+",
        type=Path,
        metavar="IMAGE",
        help="the saved model's 3 likeliest classes for each image file, or each image in a folder",
    )
    add("--checkpoint", type=Path, help="the saved model (default OUT_DIR/model.pt)")
    args = parse_with_common_flags(p, argv, data="cifar-10-batches-py/")
    # A dry run writes its model into OUT_DIR/dry-run/, never over a trained one.
    args.checkpoint = None if args.dry_run else args.checkpoint
    if args.image_folder and args.data_dir != p.get_default("data_dir"):
        p.error("--data-dir is for CIFAR-10: with --image-folder, leave it out")
    training = "epochs batch_size lr without image_folder".split()
    if args.predict and any(getattr(args, f) != p.get_default(f) for f in training):
        p.error("--predict uses the saved model: drop the training flags")
    return args


def image_files(paths):
    """The files given, and the image files in the folders given (sorted), as is_image_file()
    says; a folder's other files are skipped and named, a missing path is a one-line error."""
    files, skipped = [], []
    for path in paths:
        if not path.exists():
            sys.exit(f"error: --predict {path}: no such file or folder")
        if not path.is_dir():
            files.append(path)
            continue
        in_folder = sorted(file for file in path.iterdir() if file.is_file())
        files += [file for file in in_folder if is_image_file(file)]
        skipped += [file.name for file in in_folder if not is_image_file(file)]
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        print(f"skipped, not images: {', '.join(skipped[:5])}{more}")
    if not files:
        sys.exit(f"error: --predict found no images ({', '.join(IMG_EXTENSIONS)} files)")
    return files


def is_image_file(path):
    """Whether a file in a folder is read as an image: one of the extensions torchvision reads,
    and not hidden (Finder's .DS_Store, and the ._ files macOS writes beside copied images)."""
    return Path(path).suffix.lower() in IMG_EXTENSIONS and not Path(path).name.startswith(".")


def load_checkpoint(path, device):
    """(model, class names) saved in model.pt, or a one-line error saying what is wrong."""
    if not path.is_file():
        sys.exit(
            f"error: no model at {path}: train one first with python {Path(__file__).name} "
            "(add --image-folder DIR for your own classes)"
        )
    try:
        checkpoint = torch.load(path, weights_only=True)
        model = ResNet(**checkpoint["config"])
        model.load_state_dict(checkpoint["weights"])
        classes = checkpoint["classes"]
    # Empty, truncated, not a torch file, or another script's checkpoint: one line.
    except Exception as err:
        sys.exit(f"error: {path} is not a model.pt of this script ({err!r})")
    return model.to(device).eval(), classes


def batches(dataset, args, shuffle=False):
    """A DataLoader. For tensors already on the device it samples whole batches of indices, so
    each batch is sliced out at once (feedforward_1_hid_nn.py explains); images read from disk
    are decoded by two worker processes, kept from one epoch to the next, into page-locked
    ("pinned") memory where the device is a CUDA GPU: it copies there faster."""
    if isinstance(dataset, TensorDataset):
        indices = RandomSampler(dataset) if shuffle else range(len(dataset))
        sampler = BatchSampler(indices, args.batch_size, drop_last=False)
        return DataLoader(dataset, sampler=sampler, batch_size=None)
    pin = args.device.type == "cuda"
    return WorkerBatches(
        dataset, args.batch_size, shuffle, num_workers=2, pin_memory=pin, persistent_workers=True
    )


def a_few(dataset, n):
    """n random items of a dataset (seeded by --seed), or all of a smaller one. Images already on
    the device stay a TensorDataset, which batches() slices there: worker processes could not
    read them from a GPU."""
    n = min(n, len(dataset))
    subset = random_split(dataset, [n, len(dataset) - n])[0]
    return TensorDataset(*dataset[subset.indices]) if isinstance(dataset, TensorDataset) else subset


def download_cifar10(data_dir):
    """CIFAR-10 into data_dir/cifar-10-batches-py/ on first use; torchvision checks its MD5s.
    No network, a broken connection or a corrupt file ends in one line saying what to do."""
    try:
        CIFAR10(data_dir, download=not (data_dir / CIFAR10.base_folder).exists())
        CIFAR10(data_dir, train=False)
    except (OSError, RuntimeError, EOFError) as err:
        sys.exit(f"error: could not get CIFAR-10 ({err!r}): unpack {CIFAR10.url} in {data_dir}/")


def load_cifar10(data_dir, device):
    """Training and test TensorDatasets on `device`: (N, 3, 32, 32) pixels in [0, 1] and labels,
    decoded once, here, not image by image in every epoch (737 MB as floats, both sets)."""
    download_cifar10(data_dir)
    splits = []
    for dataset in (CIFAR10(data_dir, train=True), CIFAR10(data_dir, train=False)):
        # The files hold (N, height, width, channel) bytes; PyTorch wants (N, C, H, W).
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).float().div(255)
        splits.append(TensorDataset(images.to(device), torch.tensor(dataset.targets).to(device)))
    return splits


class ClassFolders(ImageFolder):
    """torchvision's ImageFolder, with hidden folders not taken for classes: Jupyter's
    .ipynb_checkpoints, macOS's .Trashes, a .git folder."""

    def find_classes(self, directory):
        classes = [name for name in super().find_classes(directory)[0] if name[0] != "."]
        return classes, {name: k for k, name in enumerate(classes)}


def load_image_folder(folder, seed, device):
    """([training, test] datasets, class names) of an ImageFolder layout: folder/train/<class>/
    and folder/test/<class>/, or a seeded fifth of train/ held out if there is no test/."""
    if not (folder / "train").is_dir():
        sys.exit(f"error: no {folder / 'train'}/ folder: --image-folder wants DIR/train/<class>/*")
    try:
        train_set, test_set = (
            ClassFolders(folder / name, ToTensor(), loader=open_image, is_valid_file=is_image_file)
            if (folder / name).is_dir()
            else None
            for name in ("train", "test")
        )
    # A class folder without images, an unreadable folder:
    except OSError as err:
        sys.exit(f"error: {folder}: {err}")
    classes = train_set.classes
    # A test/ folder with other class folders would number its classes differently.
    if test_set is not None and test_set.classes != classes:
        sys.exit(f"error: {folder}: test/ has classes {test_set.classes}, train/ {classes}")
    if test_set is None:
        held_out = len(train_set) // 5
        print(f"no {folder / 'test'}/: {held_out} training images (seeded) are the test set")
        generator = torch.Generator().manual_seed(seed)
        train_set, test_set = random_split(
            train_set, [len(train_set) - held_out, held_out], generator
        )
    megabytes = (len(train_set) + len(test_set)) * CHANNELS * SIZE * SIZE * 4 / 2**20
    if megabytes >= IN_MEMORY_LIMIT_MB:
        print(f"reading images from disk every epoch: in memory they would take {megabytes:.0f} MB")
        return (train_set, test_set), classes
    # Small enough: decode every image once, so that epochs spend no time on decoding.
    print(f"images decoded once into memory ({megabytes:.0f} MB): epochs read no files")
    tensors = [
        [torch.cat(t) for t in zip(*DataLoader(s, batch_size=256))] for s in (train_set, test_set)
    ]
    return [TensorDataset(*(t.to(device) for t in pair)) for pair in tensors], classes


def open_image(path):
    """An image file of any size and colour mode as the network's input (CHANNELS, SIZE, SIZE);
    a file that is not an image stops the run in one line."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB" if CHANNELS == 3 else "L").resize((SIZE, SIZE))
    except OSError as err:
        message = f"error: {path} is not an image this script can read ({err!r})"
        # In a DataLoader worker process sys.exit would end that process alone (and the run in a
        # long traceback): the error goes back to the main process, where WorkerBatches stops.
        if torch.utils.data.get_worker_info() is not None:
            raise NotAnImage(message) from None
        sys.exit(message)


class NotAnImage(Exception):
    """A file that is not an image, met by a DataLoader worker process."""


class WorkerBatches(DataLoader):
    """A DataLoader whose worker processes decode images from disk. A worker's NotAnImage comes
    back to the main process with the worker's traceback as its message: the run stops with the
    traceback's last line, the one-line error."""

    def __iter__(self):
        try:
            yield from super().__iter__()
        except NotAnImage as err:
            sys.exit(str(err).strip().splitlines()[-1].split(": ", 1)[1])


def report_classes(predictions, loader, classes, out_dir):
    """Print each class's accuracy, draw confusion_matrix.png; return {class: accuracy}."""
    device = predictions.device
    # Gathered on the device, copied to the CPU once.
    labels = torch.cat([labels.to(device) for _, labels in loader]).cpu()
    n = len(classes)
    # counts[true class, predicted class], over every test image.
    counts = torch.bincount(labels * n + predictions.cpu(), minlength=n * n).view(n, n)
    per_class = counts.diag() / counts.sum(1).clamp(min=1)
    for name, accuracy, total in zip(classes, per_class.tolist(), counts.sum(1).tolist()):
        print(f"  accuracy of {name:>10s}: {accuracy:6.1%}  ({total} test images)")
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * n, 1 + 0.45 * n))
    im = ax.imshow(counts.numpy(), cmap="Blues")
    for row in range(n):
        for col in range(n):
            colour = "white" if counts[row, col] > counts.max() / 2 else "black"
            ax.text(col, row, int(counts[row, col]), ha="center", va="center", color=colour)
    ax.set_xticks(range(n), classes, rotation=45)
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    fig.colorbar(im)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "confusion_matrix.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return dict(zip(classes, per_class.tolist()))


@torch.no_grad()
def save_plots(history, model, test_set, classes, out_dir):
    """curves.png (loss and accuracy per epoch) and predictions.png (16 random test images)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker="o", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss (train: batches as trained)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (train: batches as trained)")
    ax_loss.legend()
    ax_acc.legend()
    fig.savefig(out_dir / "curves.png", dpi=100, bbox_inches="tight")

    images, labels = zip(*(test_set[k] for k in torch.randperm(len(test_set))[:16].tolist()))
    images = torch.stack(images)
    guesses = model.eval()(images.to(next(model.parameters()).device)).argmax(1).tolist()
    fig, axes = plt.subplots(2, 8, figsize=(14, 4.2))
    for ax, image, label, guess in zip(axes.flat, images, labels, guesses):
        # One-channel images in grey, colour images as they are.
        ax.imshow(image.permute(1, 2, 0).squeeze(2).cpu().numpy(), cmap="gray")
        colour = "green" if guess == label else "red"
        ax.set_title(f"{classes[guess]}\n(true: {classes[label]})", fontsize=9, color=colour)
    for ax in axes.flat:
        ax.axis("off")
    fig.savefig(out_dir / "predictions.png", dpi=100, bbox_inches="tight")
    plt.close("all")


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
