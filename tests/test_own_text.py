"""Your own texts: RNN/lstm_imdb.py --text-folder and --csv (any number of classes),
RNN/lstm_multilabel.py --csv (any number of 0/1 label columns)."""

import csv
import json
import re

import pytest
import torch

import fixtures
from conftest import load_script

imdb = load_script("RNN/lstm_imdb.py")
multilabel = load_script("RNN/lstm_multilabel.py")
CLASSES = sorted(fixtures.OWN_CLASSES)


def csv_rows(path):
    """The rows of a CSV file as Python's csv module reads them: the reference."""
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def one_line_error(script, flags):
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(flag) for flag in flags])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


# ---- reading the files ----


def test_text_folder_gives_each_file_its_class_folder_name(tmp_path):
    folder = fixtures.write_text_folder(tmp_path)
    texts, labels, classes = imdb.read_text_folder(folder / "train")
    assert classes == CLASSES
    read = sorted((text.strip(), classes[label]) for text, label in zip(texts, labels.tolist()))
    assert read == sorted(fixtures.own_texts("train"))
    # The byte-order mark is not part of the first text; accents survive.
    assert not any(text.startswith("\ufeff") for text in texts)
    assert any("café" in text for text in texts)


def test_csv_gives_the_text_and_label_columns_as_the_csv_module_reads_them(tmp_path):
    path = fixtures.write_text_csv(tmp_path / "train.csv", "train")
    texts, labels, classes = imdb.read_csv(path, "text", "label")
    assert classes == CLASSES
    rows = csv_rows(path)
    assert texts == [row["text"] for row in rows] and any("\n" in text for text in texts)
    assert [classes[label] for label in labels.tolist()] == [row["label"] for row in rows]
    # Test files keep the training file's class numbers.
    test_path = fixtures.write_text_csv(tmp_path / "test.csv", "test")
    assert imdb.read_csv(test_path, "text", "label", ["a", *CLASSES])[2] == ["a", *CLASSES]


def test_test_csv_with_a_label_training_lacks_is_an_error(tmp_path):
    path = fixtures.write_text_csv(tmp_path / "test.csv", "test")
    with pytest.raises(SystemExit) as exit_info:
        imdb.read_csv(path, "text", "label", CLASSES[:2])
    assert f"labels the training texts lack, such as {CLASSES[2]!r}" in str(exit_info.value.code)


# ---- training on them, then --predict ----


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A short training on the own-texts folder: (folder, out_dir, printed output)."""
    root = tmp_path_factory.mktemp("own")
    folder = fixtures.write_text_folder(root / "texts")
    out_dir = root / "out"
    flags = ["--text-folder", folder, "--epochs", "8", "--batch-size", "4", "--out-dir", out_dir]
    return folder, out_dir, flags


def test_training_on_a_text_folder_learns_its_classes(own_run, capsys):
    folder, out_dir, flags = own_run
    imdb.main([str(flag) for flag in flags])
    printed = capsys.readouterr().out
    assert "3 classes" in printed and re.search(r"note: only \d+ training steps", printed)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert sorted(metrics["per_class_accuracy"]) == CLASSES
    # 12 test texts of 3 classes: better than chance.
    assert metrics["test_accuracy"] > 0.5
    checkpoint = torch.load(out_dir / "model.pt", weights_only=True)
    assert checkpoint["config"]["classes"] == CLASSES
    assert checkpoint["weights"]["out.weight"].shape[0] == len(CLASSES)


def test_predict_names_a_class_of_the_trained_model(own_run, capsys):
    _, out_dir, _ = own_run
    if not (out_dir / "model.pt").is_file():
        pytest.skip("needs test_training_on_a_text_folder_learns_its_classes first")
    imdb.main(["--out-dir", str(out_dir), "--predict", "A late goal in the match"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    name, probability, text = line.split(maxsplit=2)
    assert name in CLASSES and 1 / 3 <= float(probability) <= 1
    assert text == "A late goal in the match"


def test_without_test_texts_a_seeded_fifth_is_held_out(tmp_path, capsys):
    folder = fixtures.write_text_folder(tmp_path / "texts", splits=["train"])
    flags = ["--text-folder", folder, "--epochs", "1", "--val-size", "4"]
    imdb.main([str(flag) for flag in [*flags, "--out-dir", tmp_path / "out"]])
    total = len(fixtures.own_texts("train"))
    printed = capsys.readouterr().out
    assert f"no test texts given: {total // 5} training texts (seeded) are the test set" in printed
    assert f"{total - total // 5 - 4} training, 4 validation and {total // 5} test texts" in printed


def test_csv_files_train_like_the_folder(tmp_path):
    train = fixtures.write_text_csv(tmp_path / "train.csv", "train", ["text", "label"])
    test = fixtures.write_text_csv(tmp_path / "test.csv", "test", ["text", "label"])
    imdb.main(["--csv", str(train), "--test-csv", str(test), "--out-dir", str(tmp_path / "out")])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert sorted(metrics["per_class_accuracy"]) == CLASSES


# ---- bad input: one line each ----


def not_utf8(root):
    path = fixtures.write_text_folder(root) / "train" / "sport" / "3.txt"
    path.write_bytes("first line\nsecond caf\xe9 line".encode("latin-1"))
    return ["--text-folder", root], f"{path} line 2 is not UTF-8"


def empty_class(root):
    (fixtures.write_text_folder(root) / "train" / "travel").mkdir()
    return ["--text-folder", root], f"no .txt files in {root / 'train' / 'travel'}/"


def one_class(root):
    fixtures.write_text_folder(root / "data", splits=["train"])
    train = root / "one" / "train"
    train.mkdir(parents=True)
    (root / "data" / "train" / "sport").rename(train / "sport")
    return ["--text-folder", root / "one"], "a sub-folder of .txt files per class, two at least"


def other_test_classes(root):
    (fixtures.write_text_folder(root) / "test" / "sport").rename(root / "test" / "football")
    return ["--text-folder", root], "test/ has classes"


def one_label(root):
    path = root / "train.csv"
    path.write_text("text,label\nfirst text,news\nsecond text,news\n")
    return ["--csv", path], "the column 'label' of " + f"{path} holds one value only (news)"


def missing_text(root):
    path = fixtures.write_text_csv(root / "train.csv", "train", ["text", "label"])
    path.write_text(path.read_text() + ",sport\n")
    # The last line: a label without its text.
    return ["--csv", path], f"{path} line {path.read_text().count(chr(10))} has no text"


def missing_column(root):
    path = fixtures.write_text_csv(root / "train.csv", "train", ["id", "review", "label"])
    return ["--csv", path], "has no column 'text'; its columns: ['id', 'review', 'label']"


def csv_not_utf8(root):
    path = root / "train.csv"
    path.write_bytes("text,label\ngood,a\nd\xe9j\xe0 vu,b\n".encode("latin-1"))
    return ["--csv", path], f"{path} line 3 is not UTF-8"


BAD_INPUT = [not_utf8, empty_class, one_class, other_test_classes]
BAD_INPUT += [one_label, missing_text, missing_column, csv_not_utf8]


@pytest.mark.parametrize("setup", BAD_INPUT, ids=[f.__name__ for f in BAD_INPUT])
def test_bad_own_texts_are_a_one_line_error(setup, tmp_path):
    flags, expected = setup(tmp_path)
    assert expected in one_line_error(imdb, [*flags, "--out-dir", tmp_path / "out"])


# ---- lstm_multilabel.py --csv: a text column and any number of 0/1 label columns ----


def test_label_csv_gives_every_0_1_column_as_a_label(tmp_path, capsys):
    path = fixtures.write_label_csv(tmp_path / "train.csv", "train")
    (texts, targets), labels = multilabel.read_label_csv(path, "text")
    assert labels == list(fixtures.OWN_CLASSES)
    rows = csv_rows(path)
    assert texts == [row["text"] for row in rows]
    assert targets.tolist() == [[float(row[name]) for name in labels] for row in rows]
    printed = capsys.readouterr().out
    assert "not labels (values other than 0 and 1): id" in printed
    assert "labels (columns of 0s and 1s): cooking, sport, weather" in printed


def test_training_on_a_label_csv_writes_its_labels(tmp_path, capsys):
    train = fixtures.write_label_csv(tmp_path / "train.csv", "train")
    test = fixtures.write_label_csv(tmp_path / "test.csv", "test")
    out_dir = tmp_path / "out"
    flags = ["--csv", train, "--test-csv", test, "--epochs", "2", "--out-dir", out_dir]
    multilabel.main([str(flag) for flag in flags])
    assert re.search(r"note: only \d+ training steps", capsys.readouterr().out)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert sorted(metrics["test_per_label"]) == CLASSES
    assert (out_dir / "labels.png").is_file()
    assert torch.load(out_dir / "model.pt", weights_only=True)["labels"] == list(
        fixtures.OWN_CLASSES
    )
    multilabel.main(["--out-dir", str(out_dir), "--predict", "Rain and wind"])
    assert "Rain and wind" in capsys.readouterr().out


def test_label_csv_without_test_csv_holds_out_a_seeded_fifth(tmp_path):
    path = fixtures.write_label_csv(tmp_path / "train.csv", "train")
    args = multilabel.parse_args(["--csv", str(path)])
    splits, _ = multilabel.load_dataset(args)
    total = len(fixtures.own_texts("train"))
    test_size = total // 5
    val_size = round(multilabel.VAL_FRACTION * (total - test_size))
    assert [len(texts) for texts, _ in splits] == [
        total - test_size - val_size,
        val_size,
        test_size,
    ]
    assert sorted(text for texts, _ in splits for text in texts) == sorted(
        row["text"] for row in csv_rows(path)
    )


def label_csv(root, replace):
    path = fixtures.write_label_csv(root / "train.csv", "train")
    path.write_text(replace(path.read_text()))
    return path


MULTILABEL_BAD_INPUT = {
    # "fear" is 0 in every row: nothing to learn the label from.
    "one value": (
        lambda _: "text,joy,fear\nwhat fun,1,0\nso dull,0,0\n",
        "the label column 'fear' of",
    ),
    "no text": (lambda text: text + "row99,,1,0,0\n", "has no text"),
    # The blank line is skipped, not an error.
    "too few rows": (lambda _: "text,joy\nfun,1\n\ndull,0\nmeh,0\n", "3 rows are too few"),
    "no text column": (lambda text: text.replace("id,text,", "id,comment,", 1), "no column 'text'"),
    "no labels": (
        lambda text: "text,id\n" + "".join(f"words {k},a{k}\n" for k in range(5)),
        "no column of 0s and 1s besides 'text'",
    ),
}


@pytest.mark.parametrize("bad", MULTILABEL_BAD_INPUT)
def test_bad_label_csv_is_a_one_line_error(bad, tmp_path):
    replace, expected = MULTILABEL_BAD_INPUT[bad]
    path = label_csv(tmp_path, replace)
    assert expected in one_line_error(multilabel, ["--csv", path, "--out-dir", tmp_path / "o"])


REFUSED = [
    (imdb, ["--test-csv", "t.csv"], "go with --csv"),
    (imdb, ["--csv", "a.csv", "--text-folder", "d"], "one source of texts, not both"),
    (imdb, ["--text-folder", "d", "--data-dir", "x"], "--data-dir is where IMDB is"),
    (imdb, ["--predict", "good", "--csv", "a.csv"], "drop the training flags"),
    (multilabel, ["--test-csv", "t.csv"], "go with --csv"),
    (multilabel, ["--csv", "a.csv", "--dataset", "jigsaw"], "drop them with --csv"),
]


@pytest.mark.parametrize("script, flags, expected", REFUSED)
def test_flags_that_cannot_go_together_are_refused(script, flags, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(flags)
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
