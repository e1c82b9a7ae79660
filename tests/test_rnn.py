"""RNN/ and the Transformer's IMDB pipeline: tokens, vocabulary, padding invariance, truncated BPTT,
the counting data, checkpoints and --predict. (Attention itself: test_transformer.py.)"""

import random
import re
from collections import Counter
from contextlib import nullcontext

import pytest
import torch

import fixtures
from conftest import load_script, stdin_bytes

chars = load_script("RNN/lstm_net_counting_chars.py")
imdb = load_script("RNN/lstm_imdb.py")
tbptt = load_script("RNN/lstm_imdb_tbptt.py")
transformer = load_script("transformer/transformer_imdb.py")
# Every script reading IMDB: the same pipeline, checkpoints and --predict
IMDB = [imdb, tbptt, transformer]
IMDB_IDS = ["lstm_imdb", "lstm_imdb_tbptt", "transformer_imdb"]
IMDB_SCRIPTS = pytest.mark.parametrize("script", IMDB, ids=IMDB_IDS)


def logits_of(script, model, tokens, lengths):
    output = model(tokens, lengths)
    return output[0] if script is tbptt else output  # the TBPTT model also returns its state


# ---- tokeniser and vocabulary ----


@IMDB_SCRIPTS
def test_tokenize_lowercases_drops_line_breaks_and_splits_punctuation(script):
    assert script.tokenize("Great movie!<br /><br />I LOVED it, didn't you?") == [
        "great",
        "movie",
        "!",
        "i",
        "loved",
        "it",
        ",",
        "didn",
        "'",
        "t",
        "you",
        "?",
    ]
    assert script.tokenize("  <br />  ") == []


@IMDB_SCRIPTS
def test_vocab_cut_offs_specials_and_unknown_words(script):
    token_lists = [["good", "good", "bad", "film"], ["good", "bad", "rare"], ["film", "bad"]]
    specials = script.build_vocab([], min_freq=1, max_size=100)  # <pad>, <unk> (, <cls>)
    vocab = script.build_vocab(token_lists, min_freq=2, max_size=100)
    assert vocab == specials + ["good", "bad", "film"]  # "rare" (seen once) is cut
    assert vocab[script.PAD] == "<pad>" and vocab[script.UNK] == "<unk>"
    assert script.build_vocab(token_lists, min_freq=2, max_size=len(specials) + 2) == specials + [
        "good",
        "bad",
    ]
    assert script.build_vocab(token_lists, min_freq=1, max_size=100)[-1] == "rare"
    index = {word: i for i, word in enumerate(vocab)}
    good, film = index["good"], index["film"]
    assert script.encode(["good", "unseen", "film"], index, max_len=10).tolist() == [
        good,
        script.UNK,
        film,
    ]
    assert script.encode(["good", "unseen", "film"], index, max_len=2).tolist() == [
        script.UNK,
        film,
    ]  # the end is kept


@pytest.mark.parametrize("script", [*IMDB, chars], ids=IMDB_IDS + ["counting_chars"])
def test_batches_pad_with_the_pad_index_and_report_lengths(script):
    sequences = [torch.arange(2, 2 + n) for n in (3, 9, 5, 4)]
    batches = list(script.batches(sequences, torch.tensor([0, 1, 0, 1]), batch_size=2))
    seen = []
    for tokens, lengths, _ in batches:
        for row, length in zip(tokens, lengths):
            assert (row[length:] == script.PAD).all() and (row[:length] != script.PAD).all()
            seen.append(length.item())
    assert sorted(seen) == [3, 4, 5, 9]
    assert [len(batch[1]) for batch in batches] == [2, 2]
    assert batches[0][1].max() <= batches[1][1].min()  # bucketing: short reviews together
    shuffled = list(
        script.batches(sequences, torch.tensor([0, 1, 0, 1]), 2, torch.Generator().manual_seed(0))
    )
    assert sorted(n for batch in shuffled for n in batch[1].tolist()) == [3, 4, 5, 9]  # each once


# ---- padding never changes a prediction ----


@pytest.mark.parametrize("script", [imdb, tbptt], ids=IMDB_IDS[:2])
def test_padding_does_not_change_the_logits(script):
    torch.manual_seed(0)
    model = script.SentimentLSTM(vocab_size=50, embedding=8, hidden=16).eval()
    review = torch.randint(2, 50, (7,))
    alone = logits_of(script, model, review.unsqueeze(0), torch.tensor([7]))
    longer = [torch.randint(2, 50, (n,)) for n in (40, 90)]
    batch = torch.nn.utils.rnn.pad_sequence(
        [review, *longer], batch_first=True, padding_value=script.PAD
    )
    together = logits_of(script, model, batch, torch.tensor([7, 40, 90]))
    assert batch.shape == (3, 90)
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-6)


# ---- truncated backpropagation through time ----


def tbptt_epoch(model, data, optimizer, bptt=5):
    """One epoch of the script's own loop over `data` (sequences, labels), one batch of it all."""
    amp = nullcontext(), torch.amp.GradScaler("cpu", enabled=False)
    batches = tbptt.batches(*data, len(data[0]))
    figures = tbptt.train_one_epoch(model, batches, optimizer, amp, bptt)
    return figures["train_loss"], figures["train_accuracy"]


def test_tbptt_cuts_gradients_between_chunks_but_carries_the_state():
    torch.manual_seed(0)
    model = tbptt.SentimentLSTM(vocab_size=20, embedding=8, hidden=16, dropout=0.0)
    # Chunk 1 (tokens 0-4) uses word ids 2-9 only, chunk 2 (tokens 5-9) ids 10-19 only.
    tokens = torch.cat([torch.randint(2, 10, (2, 5)), torch.randint(10, 20, (2, 5))], dim=1)
    gradients = []  # the embedding gradient at each optimiser step: after each chunk's backward
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    optimizer.register_step_pre_hook(
        lambda *_: gradients.append(model.embedding.weight.grad.clone())
    )
    tbptt_epoch(model, (list(tokens), torch.tensor([0, 1])), optimizer)
    assert len(gradients) == 2
    assert gradients[0][10:20].abs().sum() == 0 and gradients[0][2:10].abs().sum() > 0
    assert gradients[1][2:10].abs().sum() == 0, (
        "the second chunk's loss reached the first chunk's embeddings"
    )
    assert gradients[1][10:20].abs().sum() > 0

    # The state's values do carry over: chunk by chunk equals one pass over the whole reviews.
    lengths = torch.tensor([10, 10])
    with torch.no_grad():
        whole, _ = model(tokens, lengths)
        _, state = model(tokens[:, :5], torch.tensor([5, 5]))
        second, _ = model(tokens[:, 5:], torch.tensor([5, 5]), tbptt.detach(state))
        second_from_zero, _ = model(tokens[:, 5:], torch.tensor([5, 5]))
    torch.testing.assert_close(second, whole)
    assert not torch.allclose(second, second_from_zero)
    assert all(not s.requires_grad for s in tbptt.detach(tuple(s.requires_grad_() for s in state)))


def test_tbptt_takes_one_optimiser_step_per_chunk():
    torch.manual_seed(0)
    model = tbptt.SentimentLSTM(vocab_size=20, embedding=8, hidden=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps_taken = []
    optimizer.register_step_post_hook(lambda *_: steps_taken.append(1))
    data = [torch.randint(2, 20, (12,)), torch.randint(2, 20, (7,))], torch.tensor([0, 1])
    loss, accuracy = tbptt_epoch(model, data, optimizer)
    assert len(steps_taken) == 3  # 12 tokens in chunks of 5: 5 + 5 + 2
    assert loss > 0 and accuracy in (0.0, 0.5, 1.0)


def test_tbptt_train_figures_are_read_at_each_reviews_end():
    """So that the train curve compares with the validation curve (whole reviews, at their end)."""
    torch.manual_seed(0)
    model = tbptt.SentimentLSTM(vocab_size=20, embedding=8, hidden=16, dropout=0.0)
    data = [torch.randint(2, 20, (12,)), torch.randint(2, 20, (7,))], torch.tensor([0, 1])
    loss, accuracy = tbptt_epoch(model.eval(), data, torch.optim.SGD(model.parameters(), lr=0.0))
    with torch.no_grad():
        figures = tbptt.evaluate(model, tbptt.batches(*data, 2), nullcontext(), "val")
    expected_loss, expected_accuracy = figures["val_loss"], figures["val_accuracy"]
    assert loss == pytest.approx(expected_loss, rel=1e-5) and accuracy == expected_accuracy


# ---- the counting data ----


def direct_count_label(text):
    counts = Counter(text.split())
    best = max(counts.values())
    return min(letter for letter, count in counts.items() if count == best)  # tie: earliest letter


def test_counting_labels_equal_a_direct_count():
    rng = random.Random(1)
    texts = [chars.make_example(i, rng) for i in range(300)]
    for text in texts:
        assert re.fullmatch(r"[a-j]( [a-j]){99,299}", text)
        assert chars.LETTERS[chars.most_frequent_letter(text)] == direct_count_label(text)
    assert chars.most_frequent_letter("c b b c a") == 1  # b and c tie: b comes first
    # The favoured letter (i mod 10) usually wins, and every class occurs.
    favoured = sum(chars.most_frequent_letter(text) == i % 10 for i, text in enumerate(texts))
    assert favoured > 0.7 * len(texts)


def test_counting_dataset_tokens_and_labels_match():
    tokens, labels = chars.make_dataset(50, seed=3)
    for sequence, label in zip(tokens, labels):
        text = " ".join(chars.LETTERS[t - 1] for t in sequence.tolist())
        assert chars.LETTERS[label] == direct_count_label(text)
        assert (sequence != chars.PAD).all()


# ---- checkpoints and --predict ----


@pytest.fixture(scope="module", params=IMDB, ids=IMDB_IDS)
def trained(request, data_dir, tmp_path_factory):
    """A checkpoint written by a --dry-run training on the fixture reviews."""
    script = request.param
    out_dir = tmp_path_factory.mktemp("run")
    script.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(out_dir)])
    return script, out_dir / "dry-run" / "model.pt"


def test_checkpoint_loads_with_weights_only(trained):
    script, checkpoint = trained
    saved = torch.load(checkpoint, weights_only=True)
    assert set(saved) == {"weights", "vocab", "config"}
    assert saved["vocab"][:2] == ["<pad>", "<unk>"] and "wonderful" in saved["vocab"]
    assert saved["weights"]["embedding.weight"].shape[0] == len(saved["vocab"])


def predicted(output):
    return [
        (label, float(p))
        for label, p in re.findall(r"^(negative|positive) +([\d.]+) ", output, re.M)
    ]


def test_predict_round_trip(trained, capsys):
    script, checkpoint = trained
    texts = ["A wonderful film, truly wonderful!", "Terrible. <br />Just terrible."]
    script.main(
        ["--checkpoint", str(checkpoint)] + [flag for text in texts for flag in ("--predict", text)]
    )
    results = predicted(capsys.readouterr().out)
    # The same model, loaded by hand, gives the same labels and probabilities.
    model, vocab, config = script.load_checkpoint(checkpoint, torch.device("cpu"))
    index = {word: i for i, word in enumerate(vocab)}
    expected = []
    for text in texts:
        sequence = script.encode(script.tokenize(text), index, config["max_len"])
        with torch.no_grad():
            probabilities = logits_of(
                script, model, sequence.unsqueeze(0), torch.tensor([len(sequence)])
            ).softmax(1)[0]
        expected.append((script.CLASSES[probabilities.argmax()], probabilities.max().item()))
    assert [label for label, _ in results] == [label for label, _ in expected]
    assert [p for _, p in results] == pytest.approx([p for _, p in expected], abs=1e-3)


def test_predict_reads_lines_from_stdin(trained, capsys, monkeypatch):
    script, checkpoint = trained
    stdin_bytes(monkeypatch, "A wonderful film.\n\nTerrible, terrible.\r\nOk\n")
    script.main(["--checkpoint", str(checkpoint), "--predict", "-"])
    assert len(predicted(capsys.readouterr().out)) == 3  # blank lines skipped


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\n  \n", "error: --predict - read no text"),
        (b"A fine film.\nDull caf\xe9 (Latin-1)\n", "error: standard input line 2 is not UTF-8"),
    ],
    ids=["blank", "not-utf8"],
)
def test_predict_bad_stdin_is_a_one_line_error(trained, monkeypatch, data, message):
    script, checkpoint = trained
    stdin_bytes(monkeypatch, data)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--checkpoint", str(checkpoint), "--predict", "-"])
    assert str(exit_info.value.code).startswith(message)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--predict", "  <br /> "], "nothing to classify"),
        (["--predict", ""], "nothing to classify"),
        (
            ["--checkpoint", "no/such/model.pt", "--predict", "good"],
            "no checkpoint at no/such/model.pt",
        ),
    ],
)
def test_predict_bad_input_is_a_one_line_error(trained, flags, message):
    script, checkpoint = trained
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--checkpoint", str(checkpoint)] + flags)
    assert str(exit_info.value.code).startswith("error: ") and message in str(exit_info.value.code)


@IMDB_SCRIPTS
def test_training_flags_with_predict_are_refused(script, capsys):
    """The checkpoint holds the settings: a training flag would be silently ignored."""
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--predict", "good", "--epochs", "7"])
    assert exit_info.value.code == 2 and "drop the training flags" in capsys.readouterr().err


# ---- damaged dataset files ----


@IMDB_SCRIPTS
@pytest.mark.parametrize(
    "damage", [b"", b"   \n", b"caf\xe9 (Latin-1, not UTF-8)"], ids=["empty", "blank", "not-utf8"]
)
def test_unreadable_or_empty_review_names_the_file(script, damage, tmp_path):
    fixtures.write_aclimdb(tmp_path)
    broken = tmp_path / "aclImdb" / "train" / "pos" / "3_9.txt"
    broken.write_bytes(damage)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--dry-run", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and str(broken) in message and "\n" not in message


@IMDB_SCRIPTS
@pytest.mark.parametrize("content", ["empty", "another script's"])
def test_predict_with_a_bad_checkpoint_is_a_one_line_error(script, content, tmp_path):
    path = tmp_path / "model.pt"
    if content == "empty":
        path.write_bytes(b"")
    else:  # a FashionMNIST classifier's checkpoint: a valid torch file, other keys
        torch.save({"weights": {}, "config": {"hidden_sizes": [4], "dropout": 0.2}}, path)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--checkpoint", str(path), "--predict", "A fine film."])
    message = str(exit_info.value.code)
    assert (
        message.startswith(f"error: {path} is not a checkpoint of this script (")
        and "\n" not in message
    )
