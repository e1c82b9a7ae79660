"""RNN/lstm_char_lm.py: the streams, truncated BPTT across windows; both character language
models (this one and transformer/gpt_char_lm.py): seeded generation and its one-line errors."""

import pytest
import torch

from conftest import load_script

lm = load_script("RNN/lstm_char_lm.py")


def test_batchify_cuts_the_text_into_contiguous_streams():
    streams = lm.batchify(torch.arange(26), 4)
    # 26 // 4 = 6 characters a stream; the last two are dropped.
    assert streams.tolist() == [list(range(k * 6, k * 6 + 6)) for k in range(4)]


def test_windows_pair_each_character_with_the_next():
    streams = lm.batchify(torch.arange(40), 2)
    pairs = list(lm.windows(streams, 6))
    inputs = torch.cat([x for x, _ in pairs], 1)
    targets = torch.cat([y for _, y in pairs], 1)
    # Every character but each stream's last is an input, and its target is the next one.
    assert torch.equal(inputs, streams[:, :-1]) and torch.equal(targets, streams[:, 1:])
    assert [x.size(1) for x, _ in pairs] == [6, 6, 6, 1]


def test_the_state_is_carried_but_no_gradient_crosses_a_window():
    torch.manual_seed(0)
    model = lm.CharLSTM(10, embedding=4, hidden=8, dropout=0.0)
    first, second = torch.randint(10, (2, 5)), torch.randint(10, (2, 5))
    _, state = model(first)
    carried = lm.detach(state)
    # The values carry over: the second window's output depends on the first window.
    with_context, _ = model(second, carried)
    fresh, _ = model(second)
    assert not torch.allclose(with_context, fresh)
    # But the second window's loss sends no gradient back into the first window's embeddings.
    embedded = model.embedding(first).detach().requires_grad_()
    outputs, state = model.lstm(embedded)
    logits, _ = model(second, lm.detach(state))
    logits.sum().backward()
    assert embedded.grad is None
    # Without detach() it would.
    logits, _ = model(second, state)
    logits.sum().backward()
    assert embedded.grad is not None and embedded.grad.abs().sum() > 0


def test_one_epoch_takes_one_step_per_window():
    torch.manual_seed(0)
    model = lm.CharLSTM(12, embedding=4, hidden=8)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    streams = lm.batchify(torch.randint(12, (203,)), 4)  # 4 streams of 50: 49 targets each
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=5)
    loop = dict(bptt=10, autocast=torch.autocast("cpu", enabled=False))
    figures = lm.train_one_epoch(model, streams, optimizer, scheduler, loop)
    assert scheduler.last_epoch == 5 and figures["train_loss"] > 0


# Both character language models, and the flags that make their dry runs quick.
LANGUAGE_MODELS = {"RNN/lstm_char_lm.py": [], "transformer/gpt_char_lm.py": ["--context", "32"]}


@pytest.fixture(scope="module", params=LANGUAGE_MODELS)
def trained_lm(request, tmp_path_factory, data_dir):
    """(the script, the folder of its dry run's model.pt), for each language model."""
    script = load_script(request.param)
    out = tmp_path_factory.mktemp("lm") / "out"
    flags = [*LANGUAGE_MODELS[request.param], "--data-dir", str(data_dir), "--out-dir", str(out)]
    script.main(["--dry-run", *flags])
    return script, out / "dry-run"


def generate(capsys, trained_lm, *flags):
    script, out = trained_lm
    script.main(["--generate", "60", "--out-dir", str(out), *flags])
    # What follows the device line.
    return capsys.readouterr().out.split("\n", 1)[1]


def test_generation_is_seeded_and_starts_with_the_prompt(trained_lm, capsys):
    first = generate(capsys, trained_lm, "--prompt", "ROMEO:", "--seed", "3")
    again = generate(capsys, trained_lm, "--prompt", "ROMEO:", "--seed", "3")
    other = generate(capsys, trained_lm, "--prompt", "ROMEO:", "--seed", "4", "--temperature", "2")
    assert first == again and first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 61
    assert other != first


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--prompt", "ROMEO~"], "--prompt has characters the model never saw: ['~']"),
        (["--epochs", "3"], "--generate uses the checkpoint's settings"),
        (["--temperature", "0"], "expected a positive float"),
    ],
)
def test_bad_generation_requests_are_one_line(trained_lm, capsys, flags, message):
    script, out = trained_lm
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--generate", "10", "--out-dir", str(out), *flags])
    said = str(exit_info.value.code) + capsys.readouterr().err
    assert message in said


@pytest.mark.parametrize("path", LANGUAGE_MODELS)
def test_generate_without_a_model_says_how_to_train_one(path, tmp_path):
    script = load_script(path)
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--generate", "10", "--out-dir", str(tmp_path)])
    assert f"train first with python {path.split('/')[-1]}" in str(exit_info.value.code)


def test_a_text_that_is_not_utf8_names_its_line(tmp_path):
    folder = tmp_path / "tinyshakespeare"
    folder.mkdir()
    (folder / "input.txt").write_bytes(b"First line\nSecond line\n\xff\xfe bad\n" + b"x" * 200)
    with pytest.raises(SystemExit) as exit_info:
        lm.main(["--dry-run", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    assert "is not UTF-8 text (line 3)" in str(exit_info.value.code)
