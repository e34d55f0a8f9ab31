"""Checkpoint formats: the released pickles (read safely), conversion, and clear errors."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import inference.convert as converting
from inference.checkpoint import load_model
from inference.cli import logits
from inference.convert import convert
from inference.released import CheckpointError

REPO = Path(__file__).parents[2]


def writable_copy(src: Path, dst: Path) -> Path:
    """Copy a (read-only) checkpoint folder so a test can damage it."""
    for file in src.rglob("*"):
        target = dst / file.relative_to(src)
        if file.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    return dst


@pytest.fixture
def released(golden_dir, tmp_path) -> Path:
    return writable_copy(golden_dir, tmp_path / "released")


class Hostile:
    """Unpickling this calls `function(*args)`: a stand-in for arbitrary code."""

    def __init__(self, function, *args):
        self.call = (function, args)

    def __reduce__(self):
        return self.call


@pytest.mark.parametrize("attack", ["shell", "open"])
def test_hostile_pickle_is_refused_before_it_runs(attack, released, tmp_path):
    marker = tmp_path / "pwned"
    hostile = Hostile(os.system, f"touch {marker}") if attack == "shell" else Hostile(open, str(marker), "w")
    (released / "ckpt-0" / "tensor00001_000").write_bytes(pickle.dumps(hostile))
    with pytest.raises(CheckpointError, match=r"tensor00001_000.*refusing to load global (posix\.system|io\.open)"):
        load_model(released, quant="int8", dtype=torch.float32)
    with pytest.raises(CheckpointError, match="refusing"):
        convert(released, tmp_path / "converted")
    assert not marker.exists()


def test_truncated_released_file_names_file_and_tensor(released):
    file = released / "ckpt-0" / "tensor00003_000"
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"tensor00003_000 \(tensor transformer/decoder_layer_0/moe/linear_1/w\) is truncated"):
        load_model(released, quant="int8", dtype=torch.float32)


def test_missing_released_file_is_named(released):
    (released / "ckpt-0" / "tensor00020_000").unlink()
    with pytest.raises(CheckpointError, match=r"tensor00020_000 \(tensor transformer/decoder_layer_1/multi_head_attention/value/w\) is missing"):
        load_model(released, quant="none", dtype=torch.float32)


def test_shape_mismatch_names_the_tensor(released):
    # a well-formed pickle with the wrong shape for the final norm
    (released / "ckpt-0" / "tensor00001_000").write_bytes(pickle.dumps(np.ones(63, dtype=np.float32)))
    with pytest.raises(CheckpointError, match=r"tensor norm\.scale is torch\.float32 \[63\], expected torch\.float32 \[64\]"):
        load_model(released, quant="int8", dtype=torch.float32)


def test_wrong_config_is_a_mismatch_not_a_crash(released):
    config = json.loads((released / "config.json").read_text())
    (released / "config.json").write_text(json.dumps(config | {"ffn_size": 96}))
    with pytest.raises(CheckpointError, match=r"tensor layers\.\d+\.moe\.experts\.0\.linear\.weight is torch\.int8 \[88, 64\], expected torch\.int8 \[96, 64\]"):
        load_model(released, quant="int8", dtype=torch.float32)


def test_converted_folder_layout(converted_golden):
    index = json.loads((converted_golden / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(s.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
    assert index["weight_map"]["layers.1.moe.experts.7.linear_1.scales"] in shards
    assert len(index["weight_map"]) == 2 + 2 * (4 + 1 + 4 * 2 + 8 * 3 * 2)
    config = json.loads((converted_golden / "config.json").read_text())
    assert config["emb_size"] == 64 and "tensor_order" not in config
    assert not list(converted_golden.glob("*.partial"))


def test_truncated_and_missing_shards_are_named(converted_golden, tmp_path):
    folder = writable_copy(converted_golden, tmp_path / "converted")
    shard = sorted(folder.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*(truncated or invalid|cannot read tensor)"):
        load_model(folder, quant="int8", dtype=torch.float32)
    shard.unlink()
    with pytest.raises(CheckpointError, match=rf"{shard.name} is missing \(it holds tensor layers\."):
        load_model(folder, quant="int8", dtype=torch.float32)


def test_convert_resumes_after_interruption(golden_dir, golden, tmp_path, monkeypatch):
    dst = tmp_path / "converted"
    real_read = converting.read_released_tensor
    reads = []
    crash_at = [12]

    def read(file, name):
        reads.append(name)
        if len(reads) == crash_at[0]:
            raise RuntimeError("simulated crash in the middle of a shard")
        return real_read(file, name)

    monkeypatch.setattr(converting, "read_released_tensor", read)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert(golden_dir, dst, shard_bytes=100_000)
    assert not (dst / "model.safetensors.index.json").exists()  # never mistaken for complete
    with pytest.raises(CheckpointError, match="neither"):
        load_model(dst)
    done_before = json.loads((dst / ".convert-done.json").read_text())
    assert done_before

    reads.clear()
    crash_at[0] = None
    convert(golden_dir, dst, shard_bytes=100_000)
    assert len(reads) == 26 - sum(len(r["sources"]) for r in done_before.values())  # finished shards skipped
    shards = sorted(dst.glob("model-*.safetensors"))
    first_mtime = shards[0].stat().st_mtime_ns
    record = json.loads((dst / ".convert-done.json").read_text())

    # damage: truncate one shard, delete another, drop a third from the record; a stale partial file
    shards[1].write_bytes(shards[1].read_bytes()[:100])
    shards[2].unlink()
    done = json.loads((dst / ".convert-done.json").read_text())
    del done[shards[3].name]
    (dst / ".convert-done.json").write_text(json.dumps(done))
    (dst / (shards[4].name + ".partial")).write_bytes(b"junk")

    reads.clear()
    convert(golden_dir, dst, shard_bytes=100_000)
    assert reads == [name for shard in shards[1:4] for name in record[shard.name]["sources"]]  # only those three
    assert shards[0].stat().st_mtime_ns == first_mtime

    ours = logits(load_model(dst, quant="none", dtype=torch.float32), torch.from_numpy(golden["tokens"].astype(np.int64)))
    valid = golden["tokens"] != 0
    ref = golden["logits_f32"]
    assert np.linalg.norm(ours.numpy()[valid] - ref[valid]) / np.linalg.norm(ref[valid]) < 5e-3


def test_convert_copies_the_tokenizer(golden_dir, tmp_path):
    tokenizer = golden_dir.parent / "tokenizer.model"
    if not tokenizer.exists():
        pytest.skip("no ../shared/grok1/tokenizer.model")
    convert(golden_dir, tmp_path / "converted", tokenizer=tokenizer)
    assert (tmp_path / "converted" / "tokenizer.model").read_bytes() == tokenizer.read_bytes()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inference", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_logits_cli_end_to_end(golden_dir, golden, tmp_path):
    out = tmp_path / "logits.npy"
    done = run_cli(
        "logits", "--checkpoint", str(golden_dir), "--tokens", str(golden_dir / "golden.npz"),
        "--dtype", "float32", "--out", str(out),
    )
    assert done.returncode == 0, done.stderr
    ours = np.load(out)
    assert ours.dtype == np.float32 and ours.shape == golden["logits_f32"].shape
    valid = golden["tokens"] != 0
    ref = golden["logits_f32"]
    for b in range(len(ref)):
        assert np.linalg.norm(ours[b][valid[b]] - ref[b][valid[b]]) / np.linalg.norm(ref[b][valid[b]]) < 5e-3
