"""Run every script as a user would: a subprocess with --dry-run on the fixture data, offline."""

import json
import re

import pytest
import torch

from conftest import REAL_RUN, REAL_RUN_BYTES, REPO, all_scripts


@pytest.mark.parametrize("script", all_scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_dry_run(script, dry_runs):
    result, out_dir = dry_runs[script]
    assert result.returncode == 0, result.stderr[-3000:]
    # A dry run writes into a folder of its own: the real run's results stay as they were.
    assert out_dir.name == "dry-run" and str(out_dir) in result.stdout
    for name in REAL_RUN:
        assert (out_dir.parent / name).read_bytes() == REAL_RUN_BYTES, name
    assert re.search(
        r"^device: (cpu|cuda|mps|xpu) \(.*\); precision: (fp32|bf16|fp16) \(.+\)$",
        result.stdout,
        re.M,
    )
    # One line per epoch with its losses, its metric and its time.
    assert re.search(r"^epoch 1  .*loss [\d.e-]+.*  seconds [\d.e-]+$", result.stdout, re.M), (
        result.stdout
    )
    assert "\r" not in result.stderr, "a progress bar wrote carriage returns into a log"
    metrics = json.loads((out_dir / "metrics.json").read_text())
    # The headline is a test-set figure, or (for a script without a test set) a validation one;
    # test_* keys hold test-set figures only.
    split, value = metrics["headline"].split("_")[0], metrics[metrics["headline"]]
    assert split in ("test", "val")
    # A loss (the language model's headline) has no upper bound; the other figures are shares.
    assert value > 0 if metrics["headline"].endswith("_loss") else 0.0 <= value <= 1.0
    assert split == "test" or not any(key.startswith("test_") for key in metrics)
    assert metrics["precision"] in ("fp32", "bf16", "fp16") and metrics["script"] == script.name
    assert metrics["history"] and all("seconds" in epoch for epoch in metrics["history"])
    pngs = sorted(out_dir.glob("*.png"))
    assert pngs, "no PNG written"
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000, png
    # The trained model, loadable without running any code from the file.
    checkpoint = torch.load(out_dir / "model.pt", weights_only=True)
    assert checkpoint["weights"] and all(
        isinstance(value, torch.Tensor) for value in checkpoint["weights"].values()
    )
