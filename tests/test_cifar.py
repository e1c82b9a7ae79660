"""The CIFAR-10 scripts read the official python batches correctly; their models fit the data;
conv_net_cifar.py and resnet_cifar.py --image-folder train on a folder of the learner's own
images, and --predict names what is in the learner's own pictures."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import fixtures
from conftest import REPO, load_script

FEEDFORWARD = ["feedforward_1_hid_nn.py", "feedforward_3_hid_nn.py"]
# The scripts with --image-folder and --predict.
IMAGE_SCRIPTS = ["conv_net_cifar.py", "resnet_cifar.py"]


def expected_pixels(i, mean=(0.0,) * 3, std=(1.0,) * 3):
    """Every pixel of fixture image i holds pixel_value(i): (3, 32, 32), normalised per channel."""
    value = torch.full((3, 1, 1), fixtures.pixel_value(i) / 255)
    return ((value - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)).expand(
        3, 32, 32
    )


@pytest.mark.parametrize("script", FEEDFORWARD)
def test_feedforward_loader_decodes_labels_and_normalises(script, data_dir):
    module = load_script(script)
    n_train = 5 * fixtures.CIFAR_TRAIN_PER_BATCH
    for train, count in ((True, n_train), (False, fixtures.CIFAR_TEST)):
        images, labels = module.load_split(data_dir, train, torch.device("cpu")).tensors
        assert images.shape == (count, 3, 32, 32) and images.dtype == torch.float32
        assert labels.tolist() == [i % 10 for i in range(count)]
    images = module.load_split(data_dir, True, torch.device("cpu")).tensors[0]
    for i in (0, 1, n_train - 1):
        assert torch.allclose(images[i], expected_pixels(i, module.MEAN, module.STD), atol=1e-5)


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_cnn_loader_keeps_pixels_in_0_1_and_the_model_normalises(script, data_dir):
    module = load_script(script)
    train, test = module.load_cifar10(data_dir, torch.device("cpu"))
    assert len(train) == 5 * fixtures.CIFAR_TRAIN_PER_BATCH and len(test) == fixtures.CIFAR_TEST
    images, labels = train.tensors
    assert labels.tolist() == [i % 10 for i in range(len(train))]
    assert torch.allclose(images[7], expected_pixels(7), atol=1e-6)
    # The mean and std the model was built with travel inside it, into model.pt.
    model = getattr(module, "ConvNet", getattr(module, "ResNet", None))(
        num_classes=10, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)
    )
    assert torch.equal(model.state_dict()["mean"].flatten(), torch.tensor([0.5, 0.4, 0.3]))


@pytest.mark.parametrize("script", FEEDFORWARD)
def test_feedforward_model_maps_images_to_ten_logits(script):
    assert load_script(script).FeedForwardNet()(torch.randn(7, 3, 32, 32)).shape == (7, 10)


def test_conv_net_layers_are_as_the_readme_teaches():
    net = load_script("conv_net_cifar.py").ConvNet(num_classes=5)
    convs = [
        (c.in_channels, c.out_channels, c.kernel_size, c.padding)
        for c in (net.conv1, net.conv2, net.conv3)
    ]
    assert convs == [(3, 8, (3, 3), (1, 1)), (8, 16, (3, 3), (1, 1)), (16, 24, (3, 3), (1, 1))]
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.out_features) == (24 * 8 * 8, 100, 5)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)


class Predicts:
    """A stand-in model that answers the given classes, one image at a time, in order."""

    def __init__(self, answers, classes):
        self.answers, self.classes = list(answers), classes

    def parameters(self):
        return iter([torch.zeros(1)])

    def __call__(self, images):
        answers, self.answers = self.answers[: len(images)], self.answers[len(images) :]
        return torch.nn.functional.one_hot(torch.tensor(answers), self.classes).float()


def test_per_class_accuracy_counts_every_image_once(tmp_path):
    module = load_script("conv_net_cifar.py")
    # 7 images in batches of 3: not a multiple of the batch size.
    labels = torch.tensor([0, 0, 1, 9, 9, 9, 3])
    loader = DataLoader(torch.utils.data.TensorDataset(torch.zeros(7, 3, 32, 32), labels), 3)
    model = Predicts([0, 1, 1, 9, 9, 2, 3], 10)
    per_class = module.report_classes(model, loader, module.CIFAR10_CLASSES, tmp_path)
    assert per_class["plane"] == 0.5 and per_class["truck"] == pytest.approx(2 / 3)
    assert per_class["car"] == 1 and per_class["deer"] == 0
    assert (tmp_path / "confusion_matrix.png").exists()


# ---- --image-folder ----

CLASSES = ["ant", "bee", "cow"]


def write_image_folder(root, test=True, per_class=6):
    """root/train/<class>/ (and root/test/<class>/) PNGs of mixed sizes and colour modes, named so
    that a listing is sorted by class; each class has its own grey level."""
    for split in ("train", "test") if test else ("train",):
        for k, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                mode, size = [("L", (28, 28)), ("RGB", (40, 30)), ("RGBA", (64, 64))][i % 3]
                colour = 60 + 80 * k if mode == "L" else (60 + 80 * k,) * len(mode)
                Image.new(mode, size, colour).save(folder / f"{name}_{i:03d}.png")
    return root


# Files beside a folder's images that are not images: Finder's, the ._ files macOS writes beside
# files it copies to other disks (named like images), Windows Explorer's, and a note.
NOT_IMAGES = {
    ".DS_Store": b"\x00\x00\x00\x01Bud1",
    "._ant_000.png": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X",
    "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
    "desktop.ini": b"[.ShellClassInfo]\r\n",
    "notes.txt": b"taken in the garden",
}


def add_files_that_are_not_images(folder):
    for name, content in NOT_IMAGES.items():
        (folder / name).write_bytes(content)


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_image_folder_reads_any_size_and_mode_into_the_network_input(script, tmp_path):
    module = load_script(script)
    folder = write_image_folder(tmp_path)
    add_files_that_are_not_images(folder / "train" / "ant")
    # A hidden folder beside the classes, as Jupyter leaves one: no class of its own.
    (folder / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("L", (28, 28)).save(folder / "train" / ".ipynb_checkpoints" / "ant-checkpoint.png")
    (train, test), classes = module.load_image_folder(folder, seed=0, device=torch.device("cpu"))
    assert classes == CLASSES and len(train) == len(test) == 3 * 6
    images, labels = train.tensors
    assert images.shape == (18, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    # Each class's grey level, in every channel, whatever the file's mode and size.
    for k in range(3):
        assert torch.allclose(images[labels == k], torch.tensor((60 + 80 * k) / 255), atol=0.01)


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_image_folder_without_test_holds_out_a_seeded_part(script, tmp_path, capsys):
    module = load_script(script)
    folder = write_image_folder(tmp_path, test=False, per_class=10)
    (train, test), _ = module.load_image_folder(folder, seed=0, device=torch.device("cpu"))
    assert len(train) == 24 and len(test) == 6 and "are the test set" in capsys.readouterr().out
    (_, again), _ = module.load_image_folder(folder, seed=0, device=torch.device("cpu"))
    assert torch.equal(test.tensors[1], again.tensors[1])


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
@pytest.mark.parametrize(
    "damage", ["no train folder", "empty class", "not an image", "other test classes"]
)
def test_bad_image_folders_are_one_line_errors(script, damage, tmp_path):
    module = load_script(script)
    folder = write_image_folder(tmp_path / "images")
    if damage == "no train folder":
        (folder / "train").rename(folder / "training")
        expected = "train/ folder"
    elif damage == "empty class":
        for path in (folder / "train" / "bee").iterdir():
            path.unlink()
        expected = "bee"
    elif damage == "not an image":
        (folder / "train" / "cow" / "cow_000.png").write_text("not a picture")
        expected = "cow_000.png is not an image"
    else:
        (folder / "test" / "cow").rename(folder / "test" / "calf")
        expected = "test/ has classes"
    with pytest.raises(SystemExit) as exit_info:
        module.load_image_folder(folder, seed=0, device=torch.device("cpu"))
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and expected in message and "\n" not in message


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_a_bad_image_read_from_disk_by_a_worker_is_a_one_line_error(
    script, tmp_path, monkeypatch, start_method
):
    """A large folder is read by worker processes every epoch: a file that is not an image, met
    there, still stops the run in one line (not a worker traceback). It is a test image: the
    main process reads only training images (for their mean and std) before the workers do."""
    module = load_script(script)
    monkeypatch.setattr(module, "IN_MEMORY_LIMIT_MB", 0)
    folder = write_image_folder(tmp_path / "images")
    (folder / "test" / "cow" / "cow_000.png").write_text("not a picture")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--image-folder", str(folder), "--out-dir", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "cow_000.png is not an image" in message
    assert "\n" not in message


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_image_folder_trains_end_to_end(script, tmp_path, script_env):
    """Any number of classes through every output: curves, per-class accuracy, confusion matrix,
    pictures (sampled across classes), and model.pt with the class names."""
    folder = write_image_folder(tmp_path / "images", per_class=12)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(REPO / script), "--image-folder", str(folder)]
        + ["--epochs", "2", "--batch-size", "8", "--out-dir", str(out)],
        env=script_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "3 classes" in result.stdout and "try more --epochs" in result.stdout
    for name in ("curves.png", "predictions.png", "confusion_matrix.png", "metrics.json"):
        assert (out / name).is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class_accuracy"]) == set(CLASSES)
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert checkpoint["classes"] == CLASSES and checkpoint["config"]["num_classes"] == 3
    # The saved model, asked about a file and a folder of images of any size and mode.
    one_file = next((folder / "test" / CLASSES[1]).iterdir())
    predict = [sys.executable, str(REPO / script), "--out-dir", str(out), "--predict"]
    result = subprocess.run(
        [*predict, str(one_file), str(folder / "test" / CLASSES[2])],
        env=script_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if ".png: " in line]
    assert len(lines) == 1 + 12
    for line in lines:
        # The three likeliest classes, each with its probability, likeliest first.
        guesses = line.split(": ", 1)[1].split(", ")
        assert [g.split()[0] for g in guesses] and {g.split()[0] for g in guesses} <= set(CLASSES)
        chances = [float(g.split()[1]) for g in guesses]
        assert (
            len(chances) == 3 and chances == sorted(chances, reverse=True) and sum(chances) <= 1.002
        )


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_predict_takes_a_folders_images_and_names_the_other_files(script, tmp_path, capsys):
    module = load_script(script)
    network = getattr(module, "ConvNet", getattr(module, "ResNet", None))(num_classes=3)
    model = tmp_path / "model.pt"
    torch.save(
        dict(weights=network.state_dict(), config=dict(num_classes=3), classes=CLASSES), model
    )
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("ant_000.png", "bee.JPG"):
        Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / name)
    add_files_that_are_not_images(folder)
    module.main(["--predict", str(folder), "--checkpoint", str(model)])
    lines = capsys.readouterr().out.splitlines()
    predicted = [line.split(": ")[0] for line in lines if line.startswith(str(folder))]
    assert predicted == [str(folder / "ant_000.png"), str(folder / "bee.JPG")]
    assert f"skipped, not images: {', '.join(sorted(NOT_IMAGES))}" in lines
    (folder / "ant_000.png").unlink()
    (folder / "bee.JPG").unlink()
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--predict", str(folder), "--checkpoint", str(model)])
    assert str(exit_info.value.code).startswith("error: --predict found no images (.jpg, ")


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--predict", "photo.jpg"], "error: no model at"),
        (["--predict", "photo.jpg", "--checkpoint", "{not_a_model}"], "is not a model.pt"),
        (["--predict", "{model}", "--checkpoint", "{model}"], "is not a model.pt"),
        (["--predict", "photo.jpg", "--epochs", "3"], "drop the training flags"),
    ],
)
@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_predict_without_a_usable_model_is_one_line(script, flags, message, tmp_path, capsys):
    module = load_script(script)
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("not a model")
    (tmp_path / "photo.jpg").write_bytes(b"")
    flags = [f.format(not_a_model=not_a_model, model=not_a_model) for f in flags]
    with pytest.raises(SystemExit) as exit_info:
        module.main([*flags, "--out-dir", str(tmp_path / "out")])
    if exit_info.value.code == 2:  # argparse: its usage, then the one-line reason
        assert message in capsys.readouterr().err
    else:
        assert message in str(exit_info.value.code) and "\n" not in str(exit_info.value.code)


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_image_folder_and_data_dir_together_are_refused(script, tmp_path, capsys):
    module = load_script(script)
    with pytest.raises(SystemExit):
        module.parse_args(["--image-folder", str(tmp_path), "--data-dir", str(tmp_path)])
    assert "--data-dir is for CIFAR-10" in capsys.readouterr().err
