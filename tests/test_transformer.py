"""transformer/: the attention written out, padding invariance, what --predict and training show.

The IMDB pipeline, checkpoints and --predict's errors are tested with the LSTMs' in test_rnn.py.
"""

import math
import re
from contextlib import nullcontext

import pytest
import torch

from conftest import load_script

transformer = load_script("transformer/transformer_imdb.py")
D_MODEL, HEADS = 16, 4


def attention_and_mask(seed=0, batch=3, time=9, lengths=(9, 4, 1)):
    torch.manual_seed(seed)
    attention = transformer.SelfAttention(D_MODEL, HEADS).eval()
    x = torch.randn(batch, time, D_MODEL)
    keep = torch.arange(time) < torch.tensor(lengths)[:, None]
    return attention, x, keep


def reference_attention(attention, x, keep):
    """torch.nn.MultiheadAttention given the same weights: (output, weights averaged over heads)."""
    reference = torch.nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(attention.qkv.weight)  # rows: queries, keys, values
        reference.in_proj_bias.copy_(attention.qkv.bias)
        reference.out_proj.weight.copy_(attention.out.weight)
        reference.out_proj.bias.copy_(attention.out.bias)
    # key_padding_mask: True means "ignore this key". Weights per head, not averaged.
    return reference(x, x, x, key_padding_mask=~keep, average_attn_weights=False)


@pytest.mark.parametrize("padded", [False, True], ids=["no padding", "padding mask"])
def test_attention_equals_torch_multihead_attention(padded):
    attention, x, keep = attention_and_mask(lengths=(9, 4, 1) if padded else (9, 9, 9))
    with torch.no_grad():
        ours, cls_attention = attention(x, keep, cls_attention=True)
        expected, expected_weights = reference_attention(attention, x, keep)
    rows = keep[:, :, None]  # padded positions' outputs are never read
    torch.testing.assert_close(ours * rows, expected * rows, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cls_attention, expected_weights[:, :, 0], rtol=1e-5, atol=1e-6)


def test_attention_equals_the_explicit_formula():
    """softmax(q k^T / sqrt(d_head)) v per head, padded keys given zero weight."""
    attention, x, keep = attention_and_mask()
    with torch.no_grad():
        ours, _ = attention(x, keep)
        q, k, v = attention.qkv(x).chunk(3, dim=-1)
        heads = [t.unflatten(-1, (HEADS, -1)).transpose(1, 2) for t in (q, k, v)]
        scores = heads[0] @ heads[1].transpose(-2, -1) / math.sqrt(D_MODEL // HEADS)
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        mixed = (scores.softmax(-1) @ heads[2]).transpose(1, 2).flatten(2)
        expected = attention.out(mixed)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)


def test_a_subset_of_queries_gives_the_same_outputs():
    """The last block computes [CLS]'s output only: it must equal that row of the full output."""
    attention, x, keep = attention_and_mask()
    with torch.no_grad():
        full, _ = attention(x, keep)
        first, _ = attention(x, keep, queries=1)
    torch.testing.assert_close(first, full[:, :1], rtol=1e-5, atol=1e-6)


def small_model(seed=0):
    torch.manual_seed(seed)
    return transformer.SentimentTransformer(50, max_len=120, d_model=D_MODEL, heads=HEADS).eval()


def test_padding_does_not_change_the_logits():
    """A review alone, and in a batch with much longer ones (padded to another multiple of
    PAD_TO as well), gives the same logits."""
    model = small_model()
    review = torch.randint(3, 50, (7,))
    with torch.no_grad():
        alone = model(review.unsqueeze(0), torch.tensor([7]))
        longer = [torch.randint(3, 50, (n,)) for n in (40, 100)]
        batch = torch.nn.utils.rnn.pad_sequence(
            [review, *longer], batch_first=True, padding_value=transformer.PAD
        )
        together = model(batch, torch.tensor([7, 40, 100]))
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-6)


def test_cls_attention_covers_the_review_and_nothing_else():
    model = small_model()
    with torch.no_grad():
        _, blocks = model(torch.randint(3, 50, (2, 20)), torch.tensor([20, 5]), cls_attention=True)
    assert len(blocks) == 2
    for weights in blocks:
        # [CLS] + 20 tokens, padded; one row per head.
        assert weights.shape == (2, HEADS, transformer.round_up(21))
        torch.testing.assert_close(weights.sum(2), torch.ones(2, HEADS))
        assert (weights[1, :, 6:] == 0).all() and (weights[1, :, :6] > 0).all()


def test_attention_peaks_on_the_word_that_decides_the_label():
    """A toy task: each review holds one word that decides its label (w3: negative, w4:
    positive) among random ones. With one block, [CLS] can only learn it by attending to that
    word, and the attention that attention.png and --predict show must peak there."""
    torch.manual_seed(0)
    count, length = 600, 12
    tokens = torch.randint(5, 50, (count, length))
    labels = torch.randint(0, 2, (count,))
    where = torch.randint(0, length, (count,))
    tokens[torch.arange(count), where] = 3 + labels
    model = transformer.SentimentTransformer(50, length, d_model=32, heads=4, layers=1, dropout=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    amp = nullcontext(), torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(10):
        batches = transformer.batches(list(tokens[:500]), labels[:500], 25, torch.Generator())
        transformer.train_one_epoch(model, batches, optimizer, amp, after_step=lambda: None)
    model.eval()
    index = {f"w{i}": i for i in range(50)}
    right = peaked = 0
    for k in range(500, count):
        words = [f"w{i}" for i in tokens[k].tolist()]
        label, _, attention = transformer.classify(model, words, index, length, "cpu")
        right += label == labels[k]
        peaked += attention[0].max(0).values.argmax().item() == where[k]
    assert right >= 95 and peaked >= 95


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("transformer")
    transformer.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(out_dir)])
    return out_dir / "dry-run"


def test_training_writes_the_attention_picture(trained):
    assert (trained / "attention.png").stat().st_size > 5000
    saved = torch.load(trained / "model.pt", weights_only=True)
    assert saved["vocab"][transformer.CLS] == "<cls>"
    assert saved["config"]["model"]["heads"] == 4


def attended_words(output):
    return re.search(r"\[attended: (.*)\]$", output.strip()).group(1).split(", ")


def test_predict_names_the_five_most_attended_words(trained, capsys):
    text = "A wonderful film, truly wonderful: the cast, the music and the story."
    transformer.main(["--checkpoint", str(trained / "model.pt"), "--predict", text])
    words = attended_words(capsys.readouterr().out)
    assert len(words) == 5 and set(words) <= set(transformer.tokenize(text))
    transformer.main(["--checkpoint", str(trained / "model.pt"), "--predict", "Dull."])
    assert sorted(attended_words(capsys.readouterr().out)) == [
        ".",
        "dull",
    ]  # two tokens: only those can be named


def test_warmup_then_cosine_decay():
    factor = transformer.warmup_cosine(warmup_steps=10, total_steps=110)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5) and factor(110) == pytest.approx(0.0, abs=1e-12)
    steps = [factor(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


def test_heads_must_divide_d_model(capsys):
    with pytest.raises(SystemExit):
        transformer.parse_args(["--d-model", "64", "--heads", "5"])
    assert "does not divide" in capsys.readouterr().err


def test_the_weight_average_moves_towards_the_model_by_one_minus_decay():
    torch.manual_seed(0)
    model, average = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in average.parameters()]
    transformer.update_average(average, model, decay=0.75)
    for old, averaged, weight in zip(before, average.parameters(), model.parameters()):
        torch.testing.assert_close(averaged, 0.75 * old + 0.25 * weight)
    transformer.update_average(average, model, decay=0.0)  # --ema 0: the model's own weights
    for averaged, weight in zip(average.parameters(), model.parameters()):
        torch.testing.assert_close(averaged, weight)


@pytest.mark.parametrize("ema", [0.0, 1 - 1e-7], ids=["no averaging", "average stays at start"])
def test_the_checkpoint_holds_the_weight_average(ema, data_dir, tmp_path):
    """With a decay of almost 1 the average barely leaves the starting weights, so that is what
    training must save; with decay 0 it saves the trained weights, which have moved."""
    flags = [
        "--dry-run",
        "--ema",
        str(ema),
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(tmp_path),
    ]
    transformer.main(flags)
    saved = torch.load(tmp_path / "dry-run" / "model.pt", weights_only=True)
    torch.manual_seed(0)  # the default seed: the same starting weights as the run's
    config = saved["config"]
    start = transformer.SentimentTransformer(
        len(saved["vocab"]), config["max_len"], **config["model"]
    )
    moved = max((saved["weights"][n] - p).abs().max().item() for n, p in start.named_parameters())
    assert (moved < 1e-5) if ema else (moved > 1e-3)
