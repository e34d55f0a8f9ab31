"""bench/gpu_check.py as far as a CPU can run it: its table at a tiny width, and its arguments."""

import pytest
import torch

from bench import gpu_check

TINY = ["--device", "cpu", "--layers", "1", "--emb-size", "768", "--ffn-size", "256", "--vocab-size", "512", "--steps", "1"]


def test_the_check_prints_its_table_on_a_cpu(capsys, golden_dir):
    gpu_check.main(TINY)
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and not line.startswith("| check")]
    placements = {row[1] for row in rows if row[0] == "| decode"}
    assert {"all on cpu", "nf4, all on GPU"} < placements
    experts = next(p for p in placements if p.startswith("--offload experts"))
    assert experts.endswith("experts 4 cpu, 4 mmap (of 8)")  # half the experts resident, as on a GPU half in RAM
    assert any(p.startswith("--offload layers") and "disk" in p for p in placements)
    assert sum(row[0] == "| decode" and row[3].endswith(" tok/s") for row in rows) == 6  # 3 placements x batch 1, 8
    # the same kernels on one CPU: every placement's logits are exactly the resident ones
    logits = [row for row in rows if row[0] == "| logits"]
    assert len(logits) == 2 and all(row[3] == "rel. error 0.0e+00, argmax agrees 100%" for row in logits)
    golden = next(row for row in rows if row[0] == "| golden-tiny")
    assert golden[3].startswith("pass: ")
    assert any(row[3].startswith("skipped: ") for row in rows if row[1] == "nf4, all on GPU")


def test_the_golden_row_says_why_it_is_skipped(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "GOLDEN_DIRS", (tmp_path / "golden-tiny",))
    row = gpu_check.golden_row(torch.device("cpu"))
    assert row[3] == f"skipped: golden.npz is in none of {tmp_path / 'golden-tiny'}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a host without CUDA")
def test_bad_arguments_are_refused(capsys):
    for argv, message in [
        (["--device", "cuda"], "no CUDA device here: pass --device cpu"),
        ([*TINY, "--emb-size", "1000"], "--emb-size must be a multiple of 768"),
        ([*TINY, "--layers", "0"], "--layers must be at least 1"),
    ]:
        with pytest.raises(SystemExit):
            gpu_check.main(argv)
        assert message in capsys.readouterr().err
