"""resnet_cifar.py: the model's shapes and residual path, augmentation that keeps each image with
its label, test-time augmentation, and --without, which removes each ingredient of the recipe."""

import inspect
import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import load_script

resnet = load_script("resnet_cifar.py")


def test_the_network_halves_the_picture_three_times_and_ends_in_one_logit_per_class():
    model = resnet.ResNet(num_classes=5).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    x = torch.rand(2, 3, 32, 32)
    shapes = []
    for layer in model.layers:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    widths, sizes = resnet.WIDTHS, [32, 16, 8, 4]
    assert shapes[0] == (widths[0], 32, 32) and shapes[-1] == (widths[-1], 4, 4)
    # A residual block keeps its input's shape: its output is added to it.
    blocks = [layer for layer in model.layers if isinstance(layer, resnet.Residual)]
    assert len(blocks) == len(resnet.RESIDUAL_STAGES)
    assert {(w, s, s) for w, s in zip(widths, sizes)} <= set(shapes)


@pytest.mark.parametrize("skip", [True, False])
def test_a_residual_block_adds_its_input_to_what_its_layers_make(skip):
    block = resnet.Residual(4, skip=skip).eval()
    x = torch.rand(3, 4, 8, 8)
    with torch.no_grad():
        # Layers that output nothing: the block passes its input through, or nothing at all.
        block.f[1][0].weight.zero_()
        assert torch.equal(block(x), x if skip else torch.zeros_like(x))
    # Through the "+ x" the gradient reaches the input even when the layers pass none.
    x.requires_grad_(True)
    block(x).sum().backward()
    assert (x.grad.abs().sum() > 0) == skip


def test_without_batch_norm_the_convolutions_keep_their_bias():
    model = resnet.ResNet(batch_norm=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)


def test_augmentation_moves_pixels_within_each_image_and_keeps_its_label():
    # Image k holds only the value k: whatever the flips and shifts, it must stay image k.
    n = 64
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 32, 32)
    out = resnet.augment(images.contiguous())
    assert out.shape == images.shape and torch.equal(out, images)


def test_a_shift_is_a_window_of_the_mirrored_border_and_shifts_vary():
    torch.manual_seed(0)
    image = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    images = image.expand(200, 3, 32, 32).contiguous()
    out = resnet.augment(images, flip=False, shift=True)
    padded = torch.nn.functional.pad(image, (resnet.SHIFT,) * 4, mode="reflect")[0, 0]
    span = range(2 * resnet.SHIFT + 1)
    windows = {(dy, dx): padded[dy : dy + 32, dx : dx + 32] for dy in span for dx in span}
    seen = set()
    for picture in out:
        # Every channel shifted alike, and by one of the allowed offsets.
        assert torch.equal(picture[0], picture[2])
        match = [k for k, window in windows.items() if torch.equal(picture[0], window)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == len(windows), "200 images should show all 25 shifts"


def test_flips_mirror_about_half_the_images():
    torch.manual_seed(0)
    image = torch.rand(1, 3, 32, 32)
    out = resnet.augment(image.expand(400, -1, -1, -1), flip=True, shift=False)
    mirrored = sum(torch.equal(o, image[0].flip(2)) for o in out)
    unchanged = sum(torch.equal(o, image[0]) for o in out)
    assert mirrored + unchanged == 400 and 150 < mirrored < 250


class LeftOrRight(torch.nn.Module):
    """Class 0 when the left half of the picture is much brighter than the right, class 1 when
    the right half is, class 2 otherwise: averaged over mirror images, it always says 2."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        left, right = images[..., :16].mean((1, 2, 3)), images[..., 16:].mean((1, 2, 3))
        return torch.stack([left, right, 0.55 * (left + right)], 1)


def test_test_time_augmentation_sees_each_image_mirrored_and_moved_a_pixel():
    images = torch.rand(2, 3, 32, 32)
    versions = list(resnet.tta_versions(images))
    assert len(versions) == 6 and all(v.shape == images.shape for v in versions)
    mirror = images.flip(3)
    assert torch.equal(versions[0], images) and torch.equal(versions[3], mirror)
    for k, image in ((0, images), (3, mirror)):
        # One pixel down and right of the border, then up and left; the inside is the image's.
        assert torch.equal(versions[k + 1][..., 1:, 1:], image[..., :-1, :-1])
        assert torch.equal(versions[k + 2][..., :-1, :-1], image[..., 1:, 1:])


def test_test_time_augmentation_averages_the_logits_of_the_six_versions():
    # Bright left halves: class 0 seen plainly, class 2 averaged with their mirror images.
    images = torch.rand(6, 3, 32, 32) * 0.2
    images[..., :16] += 0.6
    labels = torch.tensor([0, 2, 2, 2, 1, 2])
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    model, plain = LeftOrRight(), torch.autocast("cpu", enabled=False)
    figures, predictions = resnet.evaluate(model, loader, plain)
    assert predictions.tolist() == [0] * 6 and figures["test_accuracy"] == 1 / 6
    figures, predictions = resnet.evaluate(model, loader, plain, tta=True)
    averaged = sum(model(v) for v in resnet.tta_versions(images)) / 6
    assert predictions.tolist() == [2] * 6 and torch.equal(predictions, averaged.argmax(1))
    loss = torch.nn.functional.cross_entropy(averaged, labels).item()
    assert figures["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert figures["test_accuracy"] == 4 / 6


def test_every_ingredient_is_used_by_the_code():
    """--without NAME takes NAME out of the recipe: each name must change something."""
    source = inspect.getsource(resnet)
    for name in resnet.INGREDIENTS:
        assert source.count(f'"{name}" in recipe') >= 1, name


def test_without_everything_still_trains_and_says_what_it_left_out(data_dir, tmp_path, capsys):
    flags = ["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "out")]
    resnet.main([*flags, "--without", *resnet.INGREDIENTS])
    # A dry run writes into a folder of its own.
    out = tmp_path / "out" / "dry-run"
    printed = capsys.readouterr().out
    assert (
        "recipe: none of the ingredients;" in printed and "without batch-norm residual" in printed
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recipe"] == [] and metrics["without"] == list(resnet.INGREDIENTS)
    assert metrics["test_accuracy"] == metrics["test_accuracy_without_tta"]
    config = torch.load(out / "model.pt", weights_only=True)["config"]
    assert config["batch_norm"] is False and config["residual"] is False


def test_an_unknown_ingredient_is_refused(capsys):
    with pytest.raises(SystemExit):
        resnet.parse_args(["--without", "dropout"])
    assert "invalid choice: 'dropout'" in capsys.readouterr().err
