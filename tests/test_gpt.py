"""transformer/gpt_char_lm.py: causal attention, the windows it trains and evaluates on,
seeded generation and its one-line errors."""

import pytest
import torch

from conftest import load_script

gpt = load_script("transformer/gpt_char_lm.py")


def tiny_gpt(written_out=False):
    torch.manual_seed(0)
    model = gpt.GPT(12, context=16, width=16, layers=2, heads=2).eval()
    for block in model.blocks:
        block.attention.written_out = written_out
    return model


def test_the_written_out_attention_equals_the_fused_one():
    chars = torch.randint(12, (3, 16))
    fused, written_out = tiny_gpt()(chars), tiny_gpt(written_out=True)(chars)
    assert torch.allclose(fused, written_out, atol=1e-5)
    q, k, v = torch.randn(3, 2, 2, 7, 4).unbind()
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(gpt.attention_written_out(q, k, v), expected, atol=1e-6)


@pytest.mark.parametrize("written_out", [False, True])
def test_a_later_character_never_changes_an_earlier_prediction(written_out):
    model = tiny_gpt(written_out)
    chars = torch.randint(12, (1, 16))
    changed = chars.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % 12
    before, after = model(chars), model(changed)
    # Positions 0 to 8 see the same characters: the same logits. Position 9 sees the change.
    assert torch.allclose(before[0, :9], after[0, :9], atol=1e-6)
    assert not torch.allclose(before[0, 9], after[0, 9])


def test_without_the_mask_a_position_would_see_the_future(monkeypatch):
    # The test above can fail: with the mask gone, earlier positions change too.
    model = tiny_gpt(written_out=True)
    chars = torch.randint(12, (1, 16))
    changed = chars.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 12
    monkeypatch.setattr(torch.Tensor, "masked_fill", lambda scores, mask, value: scores)
    assert not torch.allclose(model(chars)[0, 0], model(changed)[0, 0])


@pytest.mark.parametrize("length, context", [(129, 128), (300, 128), (257, 128), (1000, 16)])
def test_evaluation_scores_every_character_once(length, context):
    starts, first = gpt.scored_windows(length, context)
    scored = [
        start + 1 + j
        for start, skip in zip(starts.tolist(), first.tolist())
        for j in range(skip, context)
    ]
    assert sorted(scored) == list(range(1, length))
    # Every character but the first half window's has at least half a window before it.
    assert all(start + skip >= context // 2 for start, skip in zip(starts[1:], first[1:]))


def test_an_epoch_makes_every_character_a_target_once():
    torch.manual_seed(0)
    windows = gpt.shuffled_windows(torch.arange(100), 8)
    # 100 characters from a random offset below 8: 11 or 12 windows of 9, each starting where
    # the one before ended (its last character is the next one's first input), shuffled.
    offset = int(windows[:, 0].min())
    assert len(windows) in (11, 12) and windows.shape[1] == 9
    assert sorted(windows[:, 0].tolist()) == list(range(offset, offset + 8 * len(windows), 8))
    assert all(torch.equal(w, torch.arange(w[0], w[0] + 9)) for w in windows)
    assert windows[:, 0].tolist() != sorted(windows[:, 0].tolist())
    # Other seeds, other offsets: the windows' borders move from epoch to epoch.
    offsets = {int(gpt.shuffled_windows(torch.arange(100), 8)[:, 0].min() % 8) for _ in range(20)}
    assert len(offsets) > 1


def test_one_epoch_takes_one_step_per_batch():
    torch.manual_seed(0)
    model = gpt.GPT(12, context=8, width=8, layers=1, heads=2)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = gpt.shuffled_windows(torch.arange(100) % 12, 8).split(3)
    amp = (torch.autocast("cpu", enabled=False), torch.amp.GradScaler("cpu", enabled=False))
    figures = gpt.train_one_epoch(model, batches, optimizer, scheduler, amp)
    assert scheduler.last_epoch == len(batches) and 0 < figures["train_loss"] < 10


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("gpt") / "out"
    gpt.main(["--dry-run", "--context", "32", "--data-dir", str(data_dir), "--out-dir", str(out)])
    return out / "dry-run"


def generate(capsys, out, *flags):
    gpt.main(["--generate", "60", "--out-dir", str(out), *flags])
    # What follows the device line.
    return capsys.readouterr().out.split("\n", 1)[1]


def test_top_k_one_always_takes_the_likeliest_character(model_dir, capsys):
    seeds = [generate(capsys, model_dir, "--top-k", "1", "--seed", s) for s in ("1", "2")]
    assert seeds[0] == seeds[1]


def test_a_negative_top_k_is_one_line(model_dir, capsys):
    """(test_char_lm.py checks the errors both language models share.)"""
    with pytest.raises(SystemExit) as exit_info:
        gpt.main(["--generate", "10", "--out-dir", str(model_dir), "--top-k", "-1"])
    said = str(exit_info.value.code) + capsys.readouterr().err
    assert "--top-k must be 0 (off) or more" in said


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--width", "30", "--heads", "4"], "--width (30) must be a multiple of --heads (4)"),
        (["--context", "4000"], "--context 4000 is longer than the validation text"),
    ],
)
def test_bad_model_settings_are_one_line(data_dir, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        gpt.main(["--dry-run", "--data-dir", str(data_dir), "--out-dir", str(tmp_path), *flags])
    said = str(exit_info.value.code) + capsys.readouterr().err
    assert message in said
