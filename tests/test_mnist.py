"""The mnist/ scripts read the IDX files correctly; the classifier's split and checkpoint behave."""

import inspect
import json

import pytest
import torch

import fixtures
from conftest import load_script

# Every script, and whether it standardises with its own MEAN and STD.
LOADERS = [
    ("mnist/fc_regression.py", False),  # pixels in [0, 1], not standardised
    ("mnist/fc_mnist.py", True),
    ("mnist/conv_mnist.py", True),
    ("mnist/fashion_mnist_ffnn.py", True),
    ("mnist/fashion_mnist_classifier.py", True),
]


def split_tensors(module, data_dir, train):
    """(images, labels) of a script's load_split(): the first lessons keep them on the CPU in a
    Dataset of their own; the later ones put a TensorDataset on the device they are given."""
    if "device" in inspect.signature(module.load_split).parameters:
        return module.load_split(data_dir, train, torch.device("cpu")).tensors
    split = module.load_split(data_dir, train)
    return split.tensors if hasattr(split, "tensors") else (split.images, split.labels)


@pytest.mark.parametrize("script, standardised", LOADERS)
def test_loader_decodes_labels_and_normalises(script, standardised, data_dir):
    module = load_script(script)
    module.download(data_dir)
    for train, count in ((True, fixtures.MNIST_TRAIN), (False, fixtures.MNIST_TEST)):
        images, labels = split_tensors(module, data_dir, train)
        assert images.shape == (count, 1, 28, 28) and images.dtype == torch.float32
        assert labels.tolist() == [i % 10 for i in range(count)]
    train_x = split_tensors(module, data_dir, True)[0]
    mean, std = (module.MEAN, module.STD) if standardised else (0.0, 1.0)
    if standardised:  # the statistics of the real training pixels, as published
        assert (round(module.MEAN, 2), round(module.STD, 2)) in ((0.13, 0.31), (0.29, 0.35))
    for i in (0, 1, 7):
        expected = (fixtures.pixel_value(i) / 255 - mean) / std
        assert torch.allclose(train_x[i], torch.full((1, 28, 28), expected), atol=1e-5)


def test_conv_mnist_flattens_to_32_features():
    net = load_script("mnist/conv_mnist.py").ConvNet()
    assert net.out.in_features == 32 and net(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_fashion_ffnn_depth_is_a_setting():
    module = load_script("mnist/fashion_mnist_ffnn.py")
    net = module.FeedForwardNet(num_hidden=4, hidden_dim=32, dropout=0.1)
    assert (
        len(net.hidden_layers) == 4 and len(list(net.parameters())) == 2 * 5
    )  # ModuleList registers every layer
    log_probs = net(torch.randn(5, 1, 28, 28))
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(5))


def test_regression_rounds_outputs_to_digits():
    module = load_script("mnist/fc_regression.py")
    assert module.predict_digit(torch.tensor([[-3.0], [0.4], [6.5], [6.6], [12.0]])).tolist() == [
        0,
        0,
        6,
        7,
        9,
    ]
    assert module.make_model(0)(torch.randn(2, 1, 28, 28)).shape == (2, 1)
    assert module.make_model(10)[1].out_features == 10


@pytest.fixture(scope="module")
def classifier():
    return load_script("mnist/fashion_mnist_classifier.py")


def test_checkpoint_round_trip_gives_identical_predictions(classifier, tmp_path):
    torch.manual_seed(0)
    config = dict(hidden_sizes=[256, 128, 64], dropout=0.2)
    model = classifier.Classifier(**config).eval()
    path = tmp_path / "model.pt"
    classifier.save_checkpoint(model, config, path)
    torch.load(path, weights_only=True)  # plain tensors and values only
    reloaded = classifier.load_checkpoint(path, torch.device("cpu")).eval()
    images = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(images), reloaded(images))


def test_eval_only_reloads_a_trained_checkpoint(classifier, data_dir, tmp_path, capsys):
    classifier.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)])
    run = tmp_path / "dry-run"
    trained = json.loads((run / "metrics.json").read_text())
    before = (run / "metrics.json").read_bytes()
    classifier.main(
        [
            "--eval-only",
            "--checkpoint",
            str(run / "model.pt"),
            "--dry-run",
            "--data-dir",
            str(data_dir),
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert (run / "metrics.json").read_bytes() == before  # the training record is left alone
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert evaluation["checkpoint"] == str(run / "model.pt")
    assert not {"epochs", "history"} & set(evaluation)  # it trained nothing
    # Same weights, same test set: the same figures.
    assert evaluation["test_accuracy"] == trained["test_accuracy"]
    assert evaluation["test_loss"] == pytest.approx(trained["test_loss"])


def test_eval_only_without_a_model_is_a_clear_error(classifier, data_dir, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        classifier.main(["--eval-only", "--data-dir", str(data_dir), "--out-dir", str(tmp_path)])
    assert str(exit_info.value.code).startswith(f"error: no checkpoint at {tmp_path / 'model.pt'}")
    with pytest.raises(SystemExit) as exit_info:
        classifier.parse_args(["--eval-only", "--checkpoint", "x.pt", "--epochs", "3"])
    assert exit_info.value.code == 2 and "trains nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        classifier.load_checkpoint(tmp_path / "missing.pt", torch.device("cpu"))
    assert str(exit_info.value.code).startswith("error: no checkpoint at")


@pytest.mark.parametrize("content", ["empty", "another script's", "not torch"])
def test_a_bad_checkpoint_is_a_one_line_error(classifier, content, tmp_path):
    path = tmp_path / "bad.pt"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "not torch":
        path.write_text("hello")
    else:  # a valid torch file of other contents (an IMDB checkpoint, say)
        torch.save({"weights": {}, "vocab": ["<pad>"], "config": {"model": {}}}, path)
    with pytest.raises(SystemExit) as exit_info:
        classifier.load_checkpoint(path, torch.device("cpu"))
    message = str(exit_info.value.code)
    assert (
        message.startswith(f"error: {path} is not a checkpoint of this script (")
        and "\n" not in message
    )
