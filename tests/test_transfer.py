"""transfer/finetune_images.py: a probe leaves the backbone as it was and fine-tuning changes it;
a backbone is resnet_cifar.py's model.pt (anything else is refused in one line) or torchvision's
ImageNet ResNet-18 (from a weights file a test writes: nothing is downloaded); a learner's folder
is learnt from a backbone, and --predict names what is in a new image."""

import pytest
import torch
from PIL import Image
from test_cifar import CLASSES, add_files_that_are_not_images, write_image_folder
from torchvision.models import ResNet18_Weights, resnet18

from conftest import load_script

transfer = load_script("transfer/finetune_images.py")
resnet = load_script("resnet_cifar.py")


@pytest.fixture(scope="module")
def backbone_file(data_dir, tmp_path_factory):
    """A model.pt written by resnet_cifar.py (a dry run on the CIFAR-10 fixtures)."""
    out = tmp_path_factory.mktemp("resnet")
    resnet.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(out)])
    return out / "dry-run" / "model.pt"


def trained(backbone_file, mode, data_dir, tmp_path):
    """The backbone's checkpoint, and the model.pt of one mode trained on the fixtures."""
    flags = ["--backbone", str(backbone_file), "--mode", mode, "--images-per-class", "4"]
    transfer.main([*flags, "--steps", "3", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)])
    return torch.load(backbone_file), torch.load(tmp_path / "model.pt", weights_only=True)


def backbone_part(weights):
    return {k: w for k, w in weights.items() if not k.startswith("classifier.")}


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_a_probe_leaves_the_backbone_as_it_was_and_fine_tuning_changes_it(
    mode, backbone_file, data_dir, tmp_path
):
    before, after = trained(backbone_file, mode, data_dir, tmp_path)
    old, new = backbone_part(before["weights"]), backbone_part(after["weights"])
    assert old.keys() == new.keys() and any("running_mean" in k for k in old)
    unchanged = [k for k in old if torch.equal(old[k], new[k])]
    # Batch norm's running averages are kept too: the frozen backbone runs in eval mode.
    assert (len(unchanged) == len(old)) == (mode == "probe"), unchanged
    # A new last layer, for the five new classes.
    assert after["weights"]["classifier.weight"].shape == (5, 128)
    assert after["classes"] == list(transfer.CIFAR10_CLASSES[5:])


def test_scratch_starts_from_random_weights(backbone_file, data_dir, tmp_path):
    torch.manual_seed(1)
    model, _ = transfer.new_model(torch.load(backbone_file), "scratch", 5, torch.device("cpu"))
    loaded = torch.load(backbone_file)["weights"]
    assert not torch.equal(model.state_dict()["layers.0.0.weight"], loaded["layers.0.0.weight"])


def test_the_default_run_trains_a_backbone_of_the_first_five_classes(data_dir, tmp_path, capsys):
    transfer.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    saved = torch.load(tmp_path / "dry-run" / "backbone.pt", weights_only=True)
    assert saved["classes"] == list(transfer.CIFAR10_CLASSES[:5])
    # It is a model.pt of resnet_cifar.py: that script predicts with it.
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    backbone = tmp_path / "dry-run" / "backbone.pt"
    resnet.main(["--predict", str(image), "--checkpoint", str(backbone)])
    assert "photo.png: " in capsys.readouterr().out
    # One row per number of images, one column per mode.
    assert "images per class   scratch     probe  finetune" in out


def test_chosen_images_are_seeded_and_nested():
    images = torch.arange(60.0).view(60, 1, 1, 1)
    labels = torch.arange(60) % 3
    dataset = torch.utils.data.TensorDataset(images, labels)
    cpu = torch.device("cpu")
    few, more = (transfer.pick(dataset, [2, 0], n, 0, cpu) for n in (3, 10))
    assert few.tensors[1].tolist() == [0] * 3 + [1] * 3
    # The images of class 2 are relabelled 0; the 3 of each class are among the 10.
    assert set(few.tensors[0].flatten().tolist()) <= set(more.tensors[0].flatten().tolist())
    assert all(int(x) % 3 == 2 for x in few.tensors[0][:3].flatten())
    again = transfer.pick(dataset, [2, 0], 3, 0, cpu)
    assert torch.equal(again.tensors[0], few.tensors[0])
    assert not torch.equal(transfer.pick(dataset, [2, 0], 3, 1, cpu).tensors[0], few.tensors[0])


def one_line_error(argv):
    with pytest.raises(SystemExit) as exit_info:
        transfer.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


@pytest.mark.parametrize("content", ["other script", "not torch", "missing"])
def test_a_backbone_that_is_not_a_resnet_cifar_model_is_refused(content, data_dir, tmp_path):
    path = tmp_path / "model.pt"
    if content == "other script":
        weights = {"fc1.weight": torch.zeros(4, 3)}
        torch.save(dict(weights=weights, config=dict(num_classes=10), classes=["a"]), path)
    elif content == "not torch":
        path.write_text("a model")
    message = one_line_error(["--backbone", str(path), "--data-dir", str(data_dir)])
    assert str(path) in message


@pytest.fixture
def imagenet_weights(tmp_path, monkeypatch):
    """torchvision's ResNet-18 weights file, where torch's cache keeps a download (random
    weights, written here)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), cache / ResNet18_Weights.DEFAULT.url.split("/")[-1])
    return cache


def test_resnet18_from_imagenet_weights_learns_a_folder_and_predicts(
    imagenet_weights, tmp_path, capsys
):
    folder = write_image_folder(tmp_path / "images", per_class=2)
    out = ["--out-dir", str(tmp_path / "out")]
    transfer.main(["--backbone", "resnet18", "--image-folder", str(folder), "--steps", "2", *out])
    checkpoint = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert checkpoint["config"] == dict(torchvision="resnet18", num_classes=3, size=256)
    # The backbone's weights are the file's, fine-tuned: close to them, not equal.
    start = torch.load(imagenet_weights / ResNet18_Weights.DEFAULT.url.split("/")[-1])
    moved = checkpoint["weights"]["net.conv1.weight"] - start["conv1.weight"]
    assert 0 < moved.abs().max() < 0.1
    transfer.main(["--predict", str(folder / "test" / "ant"), *out])
    lines = [line for line in capsys.readouterr().out.splitlines() if "ant_00" in line]
    assert len(lines) == 2 and all(name in lines[0] for name in CLASSES)


def test_resnet18_without_network_says_where_to_put_the_file(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    message = one_line_error(["--backbone", "resnet18", "--data-dir", str(data_dir)])
    url = ResNet18_Weights.DEFAULT.url
    assert url in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message


def test_a_learners_folder_from_resnet_cifars_model(backbone_file, tmp_path, capsys):
    """The learner's way: resnet_cifar.py's model.pt, a folder of photos with strays beside them,
    no test/ folder (a seeded fifth is held out); then --predict on a new photo."""
    folder = write_image_folder(tmp_path / "images", test=False, per_class=10)
    add_files_that_are_not_images(folder / "train" / "ant")
    out = ["--out-dir", str(tmp_path / "out")]
    transfer.main(["--backbone", str(backbone_file), "--image-folder", str(folder), *out])
    printed = capsys.readouterr().out
    assert "a fifth of train/" in printed and "finetune  images per class 8" in printed
    photo = tmp_path / "new" / "photo.jpg"
    photo.parent.mkdir()
    Image.new("RGB", (300, 200), (60, 60, 60)).save(photo)
    (photo.parent / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    transfer.main(["--predict", str(photo.parent), *out])
    (line,) = capsys.readouterr().out.splitlines()[1:]
    assert line.startswith(f"{photo}: ") and line.count(",") == 2


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--backbone", "x.pt", "--epochs", "3"], "--epochs trains the backbone"),
        (["--image-folder", "photos"], "--image-folder: give --backbone"),
        (["--predict", "a.png", "--steps", "3"], "drop the training flags"),
    ],
)
def test_flags_that_cannot_be_used_are_refused(flags, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        transfer.parse_args(flags)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err


def test_a_hidden_folder_among_the_classes_is_a_one_line_error(tmp_path):
    """Jupyter's .ipynb_checkpoints beside the class folders: its images are not read, and the
    empty class it would make stops the run in one line that names it."""
    folder = write_image_folder(tmp_path / "images")
    (folder / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("L", (28, 28)).save(folder / "train" / ".ipynb_checkpoints" / "ant-checkpoint.png")
    with pytest.raises(SystemExit) as exit_info:
        transfer.load_image_folder(folder, 0, 32)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and ".ipynb_checkpoints" in message and "\n" not in message
