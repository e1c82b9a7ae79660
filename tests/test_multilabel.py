"""RNN/lstm_multilabel.py: its two loaders, the multilabel figures, the thresholds, the checkpoint
and --predict, and its one-line errors."""

import json
import re
import shutil
import zipfile

import pytest
import torch

import fixtures
from conftest import load_script, stdin_bytes

ml = load_script("RNN/lstm_multilabel.py")
JIGSAW = "jigsaw-toxic-comment-classification-challenge"


def row_number(text):
    """The fixtures number their comments: "Comment 12" is row 12."""
    return int(re.search(r"Comment (\d+)", text)[1])


# ---- the loaders read the official layouts ----


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_goemotions_files_give_texts_and_multi_hot_targets(data_dir, split):
    texts, targets = ml.read_goemotions(data_dir / "goemotions" / f"{split}.tsv")
    assert len(texts) == fixtures.GOEMOTIONS_ROWS[split] and targets.shape == (len(texts), 28)
    for text, row in zip(texts, targets):
        assert row.nonzero().flatten().tolist() == sorted(
            fixtures.goemotions_labels(row_number(text))
        )
    # The quotes inside texts are kept as they are (the file is split at tabs, not read as CSV).
    assert texts[0].startswith('"Comment ') and texts[0].endswith('"!')
    assert (targets.sum(1) == 2).any()  # several labels on a line


def jigsaw_rows_by_split(folder):
    return dict(zip(["train", "val", "test"], ml.read_jigsaw(folder, seed=0)))


def check_jigsaw_splits(splits):
    for texts, targets in splits.values():
        for text, row in zip(texts, targets):
            labels = fixtures.jigsaw_labels(row_number(text))
            # Commas, doubled quotes and line breaks inside a comment survive the CSV reader.
            assert text == fixtures.jigsaw_comment(row_number(text), labels) and "\n" in text
            assert row.tolist() == labels
    train_rows = sorted(row_number(text) for name in ("train", "val") for text in splits[name][0])
    assert train_rows == list(range(fixtures.JIGSAW_ROWS["train"]))
    assert len(splits["val"][0]) == round(0.1 * fixtures.JIGSAW_ROWS["train"])
    # Test rows labelled -1 (every third one in the fixture) are not scored.
    test_rows = sorted(row_number(text) for text in splits["test"][0])
    assert test_rows == [i for i in range(fixtures.JIGSAW_ROWS["test"]) if i % 3]


def test_jigsaw_csv_files_are_read_with_multiline_comments_and_unscored_rows_skipped(data_dir):
    check_jigsaw_splits(jigsaw_rows_by_split(data_dir / JIGSAW))


def test_jigsaw_zip_files_as_kaggle_downloads_them_read_the_same(data_dir, tmp_path):
    for name in ("train.csv", "test.csv", "test_labels.csv"):
        with zipfile.ZipFile(tmp_path / f"{name}.zip", "w") as archive:
            archive.write(data_dir / JIGSAW / name, name)
    from_zips, from_csvs = jigsaw_rows_by_split(tmp_path), jigsaw_rows_by_split(data_dir / JIGSAW)
    for (zip_texts, zip_targets), (csv_texts, csv_targets) in zip(
        from_zips.values(), from_csvs.values()
    ):
        assert zip_texts == csv_texts and torch.equal(zip_targets, csv_targets)


def test_equal_length_batches_hold_every_comment_once_unpadded():
    sequences = [torch.arange(n) + 1 for n in (3, 5, 3, 3, 5, 2, 3)]
    targets = torch.arange(7).float().view(-1, 1)
    for generator in (None, torch.Generator().manual_seed(0)):
        seen = []
        for tokens, batch_targets in ml.batches(sequences, targets, 2, generator):
            assert len(tokens) <= 2
            for row, target in zip(tokens, batch_targets):
                assert torch.equal(row, sequences[int(target)])
                seen.append(int(target))
        assert sorted(seen) == list(range(7))


# ---- the figures, against their definitions ----


def test_f1_precision_recall_on_a_hand_made_case():
    # Four comments, three labels. Label 0: 1 true positive, 1 false positive, 1 false negative.
    # Label 1: present twice, never predicted. Label 2: never present, predicted once.
    targets = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 0]])
    predicted = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 0, 1], [1, 0, 0]])
    scores = ml.f1_scores(predicted, targets)
    torch.testing.assert_close(scores["precision"], torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(scores["recall"], torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(scores["f1"], torch.tensor([0.5, 0.0, 0.0]))
    assert scores["macro_f1"] == pytest.approx(0.5 / 3)
    # Pooled: 1 true positive, 2 false positives, 3 false negatives.
    assert scores["micro_f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 3))


def auc_by_pairs(scores, present):
    """The definition: over all (positive, negative) pairs, 1 if in order, 1/2 if tied."""
    positives, negatives = scores[present == 1], scores[present == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p in positives.tolist() for n in negatives.tolist()]
    return sum(pairs) / len(pairs)


def test_roc_auc_counts_ordered_pairs_and_half_of_the_ties():
    probabilities = torch.tensor([[0.9], [0.5], [0.5], [0.1]])
    assert ml.roc_auc(probabilities, torch.tensor([[1], [1], [0], [0]])).item() == 0.875
    generator = torch.Generator().manual_seed(0)
    # Scores rounded to one decimal: many ties.
    probabilities = (torch.rand(200, 5, generator=generator) * 10).round() / 10
    targets = (torch.rand(200, 5, generator=generator) < probabilities).float()
    expected = [auc_by_pairs(probabilities[:, k], targets[:, k]) for k in range(5)]
    assert ml.roc_auc(probabilities, targets).tolist() == pytest.approx(expected)
    # A label on no comment (or on all of them) has no AUC: NaN, left out of the mean.
    targets[:, 0], targets[:, 1] = 0, 1
    aucs = ml.roc_auc(probabilities, targets)
    assert aucs[:2].isnan().all() and aucs.nanmean() == pytest.approx(sum(expected[2:]) / 3)


def test_tuned_threshold_is_the_f1_best_one():
    # Label 0: positives score 0.8, 0.6, 0.35; negatives 0.7, 0.3, 0.1. Thresholds in
    # [0.30, 0.35) catch every positive and one negative: F1 6/7, the best. Ties go to the
    # highest threshold of the grid: 0.34. Label 1 is on no comment: F1 is 0 at every
    # threshold, and the highest, 0.99, wins.
    probabilities = torch.tensor([0.8, 0.6, 0.35, 0.7, 0.3, 0.1]).view(-1, 1).repeat(1, 2)
    targets = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 0], [0, 0], [0, 0]])
    thresholds = ml.tune_thresholds(probabilities, targets)
    assert thresholds.tolist() == pytest.approx([0.34, 0.99])
    assert ml.f1_scores(probabilities > thresholds, targets)["f1"][0] == pytest.approx(6 / 7)


# ---- a training run on the fixtures, its checkpoint and --predict ----


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """One epoch on the GoEmotions fixture in fp32, recording the model it trained and the
    comments the thresholds were tuned on."""
    models, tuned_on = [], []

    class RecordedLSTM(ml.MultilabelLSTM):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            models.append(self)

    def recorded_tune_thresholds(probabilities, targets):
        tuned_on.append(targets)
        return tune_thresholds(probabilities, targets)

    tune_thresholds = ml.tune_thresholds
    out_dir = tmp_path_factory.mktemp("multilabel")
    flags = ["--epochs", "1", "--batch-size", "8", "--min-freq", "1", "--precision", "fp32"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ml, "MultilabelLSTM", RecordedLSTM)
        patch.setattr(ml, "tune_thresholds", recorded_tune_thresholds)
        ml.main(["--data-dir", str(data_dir), "--out-dir", str(out_dir), *flags])
    return dict(model=models[0].eval(), out_dir=out_dir, tuned_on=tuned_on)


def test_thresholds_are_tuned_on_the_validation_split_only(trained, data_dir):
    _, dev_targets = ml.read_goemotions(data_dir / "goemotions" / "dev.tsv")
    _, test_targets = ml.read_goemotions(data_dir / "goemotions" / "test.tsv")
    assert trained["tuned_on"], "tune_thresholds was never called"
    for targets in trained["tuned_on"]:
        # evaluate() takes the comments in batches of equal length: compare as sets of rows.
        assert sorted(map(tuple, targets.tolist())) == sorted(map(tuple, dev_targets.tolist()))
        assert sorted(map(tuple, targets.tolist())) != sorted(map(tuple, test_targets.tolist()))


def test_checkpoint_and_metrics_hold_plain_values(trained):
    saved = torch.load(trained["out_dir"] / "model.pt", weights_only=True)
    assert set(saved) == {"weights", "vocab", "labels", "thresholds", "config"}
    assert saved["labels"] == fixtures.GOEMOTIONS_LABELS and saved["vocab"][0] == "<unk>"
    assert all(isinstance(word, str) for word in saved["vocab"]) and "gratitude" in saved["vocab"]
    assert len(saved["thresholds"]) == 28 and all(0 < t < 1 for t in saved["thresholds"])
    config = dict(saved["config"])
    values = [*config.pop("model").values(), *config.values()]
    assert all(type(value) in (int, float, str) for value in values)
    metrics = json.loads((trained["out_dir"] / "metrics.json").read_text())
    assert metrics["headline"] == "test_macro_f1" and 0 <= metrics["test_macro_f1"] <= 1
    assert set(metrics["test_per_label"]) == set(fixtures.GOEMOTIONS_LABELS)
    assert [row["threshold"] for row in metrics["test_per_label"].values()] == pytest.approx(
        [saved["thresholds"][saved["labels"].index(label)] for label in metrics["test_per_label"]]
    )
    for png in ("curves.png", "labels.png"):
        assert (trained["out_dir"] / png).read_bytes()[:4] == b"\x89PNG"


TEXTS = ["So much gratitude, thanks!", '"Quoted" anger and disgust', "Nothing special here."]


def printed_predictions(output):
    """Each line's (label, probability) pairs, before the ' | text' part."""
    lines = [line.split("  | ")[0] for line in output.splitlines() if "  | " in line]
    return [
        [(label, float(p)) for label, p in re.findall(r"(\w+) ([\d.]+)", line)] for line in lines
    ]


def expected_predictions(trained):
    """What the model, as trained (not as loaded), gives the TEXTS: labels above their thresholds
    with their probabilities, most likely first, or the most likely label when none is."""
    saved = torch.load(trained["out_dir"] / "model.pt", weights_only=True)
    index = {word: i for i, word in enumerate(saved["vocab"])}
    expected = []
    for text in TEXTS:
        sequence = ml.encode(ml.tokenize(text), index, saved["config"]["max_len"])
        with torch.no_grad():
            probabilities = trained["model"](sequence.unsqueeze(0))[0].sigmoid().tolist()
        ranked = sorted(range(28), key=lambda k: -probabilities[k])
        above = [k for k in ranked if probabilities[k] > saved["thresholds"][k]] or ranked[:1]
        expected.append([(saved["labels"][k], probabilities[k]) for k in above])
    return expected


def test_predict_gives_the_trained_models_probabilities_from_flags_and_stdin(
    trained, capsys, monkeypatch
):
    checkpoint = ["--checkpoint", str(trained["out_dir"] / "model.pt")]
    ml.main(checkpoint + [flag for text in TEXTS for flag in ("--predict", text)])
    from_flags = printed_predictions(capsys.readouterr().out)
    stdin_bytes(monkeypatch, "\n".join(TEXTS[:2]) + "\n\n  \n" + TEXTS[2])
    ml.main(checkpoint + ["--predict", "-"])
    from_stdin = printed_predictions(capsys.readouterr().out)
    expected = expected_predictions(trained)
    assert from_flags == from_stdin and len(from_flags) == len(TEXTS)
    for printed, wanted in zip(from_flags, expected):
        assert [label for label, _ in printed] == [label for label, _ in wanted]
        assert [p for _, p in printed] == pytest.approx([p for _, p in wanted], abs=1e-3)


def test_a_short_training_learns_the_fixture(data_dir, tmp_path):
    """Each fixture comment names its labels: a few epochs are enough to rank them first."""
    flags = ["--epochs", "6", "--batch-size", "8", "--min-freq", "1", "--lr", "0.01"]
    ml.main(
        ["--dataset", "jigsaw", "--data-dir", str(data_dir), "--out-dir", str(tmp_path), *flags]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # AUC, free of thresholds: a validation split of 6 comments tunes some of them poorly.
    assert metrics["test_mean_auc"] > 0.95 and metrics["test_micro_f1"] > 0.6, metrics


# ---- one-line errors ----


def copy_of(data_dir, tmp_path, folder):
    shutil.copytree(data_dir / folder, tmp_path / folder)
    return tmp_path / folder


def damage_line(path, number, new_line):
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[number - 1] = new_line
    path.write_text("\n".join(lines), encoding="utf-8")


def training(tmp_path, *flags):
    return [*flags, "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out"), "--dry-run"]


def goemotions_damaged(new_line):
    def setup(data_dir, tmp_path):
        path = copy_of(data_dir, tmp_path, "goemotions") / "dev.tsv"
        damage_line(path, 3, new_line)
        return training(tmp_path), [f"{path} line 3"]

    return setup


def jigsaw_damaged(data_dir, tmp_path):
    path = copy_of(data_dir, tmp_path, JIGSAW) / "test_labels.csv"
    damage_line(path, 4, "t000000000000002,0,0,1,0,0")
    return training(tmp_path, "--dataset", "jigsaw"), [f"{path} line 4"]


def jigsaw_missing(data_dir, tmp_path):
    hint = "kaggle competitions download -c jigsaw-toxic-comment-classification-challenge"
    return training(tmp_path, "--dataset", "jigsaw"), [hint, str(tmp_path / JIGSAW)]


def goemotions_offline(data_dir, tmp_path):
    urls = [
        ml.GOEMOTIONS_URL + name for name in ("train.tsv", "dev.tsv", "test.tsv", "emotions.txt")
    ]
    assert (
        urls[0]
        == "https://raw.githubusercontent.com/google-research/google-research/master/goemotions/data/train.tsv"
    )
    return training(tmp_path), [*urls, str(tmp_path / "goemotions")]


def bad_checkpoint(content):
    def setup(data_dir, tmp_path):
        path = tmp_path / "model.pt"
        if content == "empty":
            path.write_bytes(b"")
        elif content == "another script's":
            torch.save({"model": {}, "hyperparameters": {"max_len": 400}}, path)
        expected = "no checkpoint at" if content == "no" else "is not a checkpoint of this script"
        return ["--checkpoint", str(path), "--predict", "thanks"], [f"{path}", expected]

    return setup


ERRORS = {
    "goemotions field count": goemotions_damaged("no tabs on this line"),
    "goemotions label id 28": goemotions_damaged("A text\t3,28\tabcdefg"),
    "goemotions label id not a number": goemotions_damaged("A text\tjoy\tabcdefg"),
    "jigsaw field count": jigsaw_damaged,
    "jigsaw files missing": jigsaw_missing,
    "goemotions offline": goemotions_offline,
    "no checkpoint": bad_checkpoint("no"),
    "empty checkpoint": bad_checkpoint("empty"),
    "another script's checkpoint": bad_checkpoint("another script's"),
}


@pytest.mark.parametrize("setup", ERRORS.values(), ids=ERRORS.keys())
def test_bad_input_is_a_one_line_error(setup, data_dir, tmp_path):
    argv, expected = setup(data_dir, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        ml.main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--predict", ""], "nothing to classify in ''"),
        (["--predict", "thanks", "--predict", "  \t "], "nothing to classify in '  \\t '"),
        (["--predict", "thanks", "--epochs", "3"], "error: --epochs: not with --predict"),
        (["--predict", "thanks", "--dataset", "jigsaw", "--lr", "1"], "--dataset --lr: not with"),
    ],
)
def test_predict_refuses_empty_texts_and_training_flags(trained, flags, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ml.main(["--checkpoint", str(trained["out_dir"] / "model.pt"), *flags])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message and expected in message
    assert "|" not in capsys.readouterr().out  # nothing was labelled before the error
