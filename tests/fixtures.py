"""Tiny datasets written in the official on-disk formats, for the tests.

Each image's pixels all hold one value, chosen from its index, so a test can check
that a script's loader decodes, labels and normalises every image correctly.
"""

import csv
import gzip
import hashlib
import json
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_TRAIN_PER_BATCH = 20  # 5 batch files -> 100 training images
CIFAR_TEST = 20
MNIST_TRAIN, MNIST_TEST = 100, 40
IMDB_PER_CLASS = {"train": 24, "test": 8}
GOEMOTIONS_ROWS = {"train": 84, "dev": 56, "test": 56}
# The rows of each split are numbered from here: different texts and labels in each split.
GOEMOTIONS_FIRST_ROW = {"train": 0, "dev": 100, "test": 200}
GOEMOTIONS_LABELS = (
    "admiration amusement anger annoyance approval caring confusion curiosity desire "
    "disappointment disapproval disgust embarrassment excitement fear gratitude grief joy love "
    "nervousness optimism pride realization relief remorse sadness surprise neutral"
).split()
JIGSAW_LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
JIGSAW_ROWS = {"train": 64, "test": 24}
# Your own texts: three classes, each text naming its class's topic, as a folder per class or
# as a CSV file (lstm_imdb.py --text-folder, --csv).
OWN_CLASSES = {
    "cooking": "Stir the soup and taste it, café style",
    "sport": "The team scored a late goal in the match",
    "weather": "Rain and wind tomorrow, a cold front",
}
OWN_PER_CLASS = {"train": 12, "test": 4}


def pixel_value(index):
    return (index * 37) % 256


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_cifar10(root, md5s):
    """cifar-10-batches-py/: pickled dicts data_batch_1..5, test_batch and batches.meta."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    files = [
        (f"data_batch_{b}", CIFAR_TRAIN_PER_BATCH, (b - 1) * CIFAR_TRAIN_PER_BATCH)
        for b in range(1, 6)
    ]
    files.append(("test_batch", CIFAR_TEST, 0))
    for name, count, first in files:
        indices = range(first, first + count)
        data = np.array(
            [[pixel_value(i)] * 3072 for i in indices], dtype=np.uint8
        )  # rows: R, G, B planes
        batch = {
            "batch_label": name,
            "labels": [i % 10 for i in indices],
            "data": data,
            "filenames": [f"image_{i}.png" for i in indices],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2)
    )
    md5s.update({path.name: md5(path) for path in folder.iterdir()})


def idx_bytes(array):
    """IDX format: zero, zero, type code (8 = unsigned byte), dimension count, sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_mnist_like(root, name, md5s):
    """NAME/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz, as torchvision downloads them."""
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", MNIST_TRAIN), ("t10k", MNIST_TEST)):
        images = np.stack([np.full((28, 28), pixel_value(i)) for i in range(count)])
        labels = np.arange(count) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = raw / f"{prefix}-{kind}-ubyte.gz"
            path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))
            md5s[path.name] = md5(path)


def imdb_review(split, label, index):
    word = "wonderful" if label == "pos" else "terrible"
    # Different lengths, <br /> tags and punctuation, as in the real reviews.
    return f"Review {index} of the {split} set.<br /><br />A {word} film, truly {word}! " * (
        1 + index % 4
    )


def write_aclimdb(root):
    """aclImdb/{train,test}/{pos,neg}/ID_RATING.txt, as in the official archive."""
    for split, count in IMDB_PER_CLASS.items():
        for label, rating in (("pos", 9), ("neg", 2)):
            folder = Path(root) / "aclImdb" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}_{rating}.txt").write_text(imdb_review(split, label, i))


def own_text(name, index):
    return f"Note {index}: {OWN_CLASSES[name]} ({'!' * (index % 3)})"


def own_texts(split):
    """[(text, class name)] of a split of the own-texts fixture."""
    return [(own_text(name, i), name) for name in OWN_CLASSES for i in range(OWN_PER_CLASS[split])]


def write_text_folder(root, splits=("train", "test")):
    """root/SPLIT/CLASS/NUMBER.txt, one text a file; the first file with a UTF-8 byte-order
    mark, the second with Windows line ends, as editors write them."""
    for split in splits:
        for number, (text, name) in enumerate(own_texts(split)):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            data = text.encode("utf-8-sig" if number == 0 else "utf-8")
            (folder / f"{number}.txt").write_bytes(data.replace(b"\n", b"\r\n") + b"\r\n")
    return Path(root)


def write_text_csv(path, split, columns=("id", "text", "label")):
    """A CSV file of a split of the own texts; the texts hold commas, quotes, a line break."""
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for number, (text, name) in enumerate(own_texts(split)):
            quoted = f'{text}, "really"\nsecond line' if number % 5 == 0 else text
            row = {"id": number, "label": name}
            # Any other column (a text column by another name) holds the text.
            writer.writerow([row.get(column, quoted) for column in columns])
    return Path(path)


def write_label_csv(path, split):
    """A CSV file of the own texts with a 0/1 column per class (multilabel): every third text
    also has the next class's words and label. An id column that is not a label comes first."""
    names = list(OWN_CLASSES)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text", *names])
        for number, (text, name) in enumerate(own_texts(split)):
            on = {name}
            if number % 3 == 0:
                on.add(names[(names.index(name) + 1) % len(names)])
                text = " ".join(OWN_CLASSES[n] for n in on)
            writer.writerow([f"row{number}", text, *(int(n in on) for n in names)])
    return Path(path)


def goemotions_labels(index):
    """Label ids of row `index`: one label, and a second one on every third row."""
    first = index % len(GOEMOTIONS_LABELS)
    return [first, (first + 5) % len(GOEMOTIONS_LABELS)] if index % 3 == 0 else [first]


def write_goemotions(root):
    """goemotions/{train,dev,test}.tsv (text, label ids, comment id) and emotions.txt.

    Each text names its labels (the emotion's own word), so a short training learns them.
    """
    folder = Path(root) / "goemotions"
    folder.mkdir(parents=True)
    # The official file has no newline after its last name.
    (folder / "emotions.txt").write_text("\n".join(GOEMOTIONS_LABELS))
    for split, count in GOEMOTIONS_ROWS.items():
        lines = []
        for i in range(GOEMOTIONS_FIRST_ROW[split], GOEMOTIONS_FIRST_ROW[split] + count):
            ids = goemotions_labels(i)
            words = " and ".join(GOEMOTIONS_LABELS[k] for k in ids)
            text = f'"Comment {i}": so much {words}, [NAME] said "{words}"!'
            lines.append(f"{text}\t{','.join(map(str, ids))}\tecm{i:04d}\n")
        (folder / f"{split}.tsv").write_text("".join(lines))


def jigsaw_labels(index):
    """Labels of row `index`: label index % 8 (severe_toxic also toxic), none for 6 and 7."""
    labels = [0] * len(JIGSAW_LABELS)
    if index % 8 < len(JIGSAW_LABELS):
        labels[index % 8] = 1
    labels[0] |= labels[1]
    return labels


def jigsaw_comment(index, labels):
    words = " ".join(f"{name}word" for name, on in zip(JIGSAW_LABELS, labels) if on)
    return f'Comment {index}, "quoted", {words or "fine"}\n\nSecond line: {words or "ok"}.'


def write_jigsaw(root):
    """jigsaw-toxic-comment-classification-challenge/ train.csv, test.csv, test_labels.csv, as
    Kaggle has them: quoted comments spanning lines; test rows Kaggle did not score are -1."""
    folder = Path(root) / "jigsaw-toxic-comment-classification-challenge"
    folder.mkdir(parents=True)
    with open(folder / "train.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["id", "comment_text", *JIGSAW_LABELS])
        for i in range(JIGSAW_ROWS["train"]):
            labels = jigsaw_labels(i)
            writer.writerow([f"{i:016x}", jigsaw_comment(i, labels), *labels])
    with (
        open(folder / "test.csv", "w", newline="", encoding="utf-8") as texts,
        open(folder / "test_labels.csv", "w", newline="", encoding="utf-8") as labels_file,
    ):
        text_writer, label_writer = csv.writer(texts), csv.writer(labels_file)
        text_writer.writerow(["id", "comment_text"])
        label_writer.writerow(["id", *JIGSAW_LABELS])
        for i in range(JIGSAW_ROWS["test"]):
            labels = jigsaw_labels(i)
            text_writer.writerow([f"t{i:015x}", jigsaw_comment(i, labels)])
            scored = labels if i % 3 else [-1] * len(JIGSAW_LABELS)
            label_writer.writerow([f"t{i:015x}", *scored])


def shakespeare_text():
    """A few thousand characters laid out like tiny Shakespeare: speakers, lines, blank lines."""
    speeches = []
    for k in range(60):
        speaker = ("ROMEO", "JULIET", "First Citizen")[k % 3]
        speeches.append(f"{speaker}:\nSpeech {k}, good my lord; what say you, sir?\nAy, {k}!\n")
    return "\n".join(speeches)


def write_tinyshakespeare(root):
    """tinyshakespeare/input.txt, as char-rnn and nanoGPT download it."""
    folder = Path(root) / "tinyshakespeare"
    folder.mkdir(parents=True)
    (folder / "input.txt").write_text(shakespeare_text(), encoding="utf-8")


def write_all(root):
    """Write every fixture dataset under root; return the path of the JSON of their MD5s."""
    root = Path(root)
    md5s = {}
    write_cifar10(root, md5s)
    write_mnist_like(root, "MNIST", md5s)
    write_mnist_like(root, "FashionMNIST", md5s)
    write_aclimdb(root)
    write_goemotions(root)
    write_jigsaw(root)
    write_tinyshakespeare(root)
    md5_file = root / "fixture-md5s.json"
    md5_file.write_text(json.dumps(md5s))
    return md5_file
