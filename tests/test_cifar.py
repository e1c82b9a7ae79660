"""The CIFAR-10 scripts read the official python batches correctly; their models fit the data."""

import pytest
import torch

import fixtures
from conftest import load_script

CIFAR_SCRIPTS = ["feedforward_1_hid_nn.py", "feedforward_3_hid_nn.py", "conv_net_cifar.py"]


@pytest.mark.parametrize("script", CIFAR_SCRIPTS)
def test_loader_decodes_labels_and_normalises(script, data_dir):
    module = load_script(script)
    (train_x, train_y), (test_x, test_y) = module.load_cifar10(data_dir, torch.device("cpu"))
    n_train = 5 * fixtures.CIFAR_TRAIN_PER_BATCH
    assert train_x.shape == (n_train, 3, 32, 32) and test_x.shape == (
        fixtures.CIFAR_TEST,
        3,
        32,
        32,
    )
    assert train_x.dtype == torch.float32
    assert train_y.tolist() == [i % 10 for i in range(n_train)]
    assert test_y.tolist() == [i % 10 for i in range(fixtures.CIFAR_TEST)]
    # Every pixel of image i holds pixel_value(i); each channel is normalised by its own mean, std.
    mean, std = torch.tensor(module.MEAN).view(3, 1, 1), torch.tensor(module.STD).view(3, 1, 1)
    for i in (0, 1, n_train - 1):
        expected = (fixtures.pixel_value(i) / 255 - mean) / std
        assert torch.allclose(train_x[i], expected.expand(3, 32, 32), atol=1e-5)


@pytest.mark.parametrize(
    "script, model_name",
    [
        ("feedforward_1_hid_nn.py", "FeedForwardNet"),
        ("feedforward_3_hid_nn.py", "FeedForwardNet"),
        ("conv_net_cifar.py", "ConvNet"),
    ],
)
def test_model_maps_images_to_ten_logits(script, model_name):
    model = getattr(load_script(script), model_name)()
    assert model(torch.randn(7, 3, 32, 32)).shape == (7, 10)


def test_conv_net_layers_are_as_the_readme_teaches():
    net = load_script("conv_net_cifar.py").ConvNet()
    convs = [
        (c.in_channels, c.out_channels, c.kernel_size, c.padding)
        for c in (net.conv1, net.conv2, net.conv3)
    ]
    assert convs == [(3, 8, (3, 3), (1, 1)), (8, 16, (3, 3), (1, 1)), (16, 24, (3, 3), (1, 1))]
    assert (net.fc1.in_features, net.fc1.out_features, net.fc2.out_features) == (
        24 * 8 * 8,
        100,
        10,
    )


def test_per_class_accuracy_counts_every_image_once(tmp_path):
    module = load_script("conv_net_cifar.py")
    labels = torch.tensor([0, 0, 1, 9, 9, 9, 3])  # 7 images: not a multiple of any batch size
    predictions = torch.tensor([0, 1, 1, 9, 9, 2, 3])
    counts = module.confusion_matrix(labels, predictions)
    assert (
        counts.sum() == 7
        and counts[0, 0] == 1
        and counts[0, 1] == 1
        and counts[9, 9] == 2
        and counts[9, 2] == 1
    )
    per_class = module.report_classes(counts, tmp_path)
    assert (
        per_class["plane"] == 0.5
        and per_class["truck"] == pytest.approx(2 / 3)
        and per_class["deer"] == 0
    )
    assert (tmp_path / "confusion_matrix.png").exists()
