"""export-gguf: golden-tiny as a GGUF, run by llama.cpp itself, against xAI's reference logits."""

import json
import subprocess
import urllib.request

import gguf
import numpy as np
import pytest

from inference.cli import main
from inference.convert import write_converted
from inference.gguf_export import export_gguf
from inference.model import GrokConfig, ffn_size
from inference.tiny import random_parameters, train_tokenizer
from inference.tokenizer import Tokenizer
from tests import llama_cpp
from tests.inference.conftest import GOLDEN
from tests.inference.test_model_golden import row_errors


@pytest.fixture(scope="module")
def exported(golden_dir, tmp_path_factory):
    """golden-tiny (released format, no tokenizer) exported in float32, with a 512-piece tokenizer."""
    folder = tmp_path_factory.mktemp("gguf")
    (folder / "tokenizer.model").write_bytes(train_tokenizer(512))
    main(["export-gguf", str(golden_dir), str(folder / "golden.gguf"), "--type", "f32",
          "--tokenizer", str(folder / "tokenizer.model")])
    return folder


def test_llama_cpp_logits_match_the_reference(exported, golden):
    tokens = golden["tokens"]
    tokens.astype(np.int32).tofile(exported / "tokens.i32")
    subprocess.run(
        [llama_cpp.logits_program(), exported / "golden.gguf", exported / "tokens.i32", str(tokens.shape[1]),
         exported / "logits.f32"],
        check=True, capture_output=True,
    )
    ref = golden["logits_f32"]
    ours = np.fromfile(exported / "logits.f32", dtype=np.float32).reshape(ref.shape)
    errors = row_errors(ours, ref, tokens)
    assert max(errors) < 1e-3, errors  # llama.cpp's fp16 GELU table: ~5e-5
    valid = tokens != 0
    assert (ours.argmax(-1) == ref.argmax(-1))[valid].all()


def test_the_file_carries_the_tokenizer_and_the_hyperparameters(exported):
    reader = gguf.GGUFReader(exported / "golden.gguf")
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "grok"
    assert (fields["grok.block_count"], fields["grok.expert_count"], fields["grok.expert_used_count"]) == (2, 8, 2)
    assert fields["grok.embedding_scale"] == pytest.approx(8.0)
    assert fields["tokenizer.ggml.model"] == "llama" and len(fields["tokenizer.ggml.tokens"]) == 512
    assert fields["tokenizer.ggml.add_bos_token"] is False
    experts = next(t for t in reader.tensors if t.name == "blk.0.ffn_down_exps.weight")
    assert list(experts.shape) == [88, 64, 8]  # ggml order: in, out, experts


def test_a_tokenizer_bigger_than_the_vocabulary_is_refused(golden_dir, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(train_tokenizer(1024))
    with pytest.raises(ValueError, match="1024 pieces but the model only 512"):
        main(["export-gguf", str(golden_dir), str(tmp_path / "x.gguf"), "--tokenizer", str(tmp_path / "tokenizer.model")])


TEXTS = [
    "The answer to life the universe and everything is of course",
    "User: Hi there!\n\nGrok:  Two  spaces, tabs\tand a newline\n",
    "Ünïcödé, 日本語, emoji 😀 and digits 1234567",
]


@pytest.fixture(scope="module")
def grok_tokenizer_server(tmp_path_factory):
    """llama-server over a one-layer random model with Grok-1's real vocabulary and tokenizer."""
    tokenizer = GOLDEN / "tokenizer.model"
    if not tokenizer.is_file():
        pytest.skip(f"Grok-1's tokenizer not found at {tokenizer}")
    config = GrokConfig(
        vocab_size=131072, context_len=256, emb_size=64, key_size=16, num_q_heads=4, num_kv_heads=2,
        num_layers=1, widening_factor=2.0, ffn_size=ffn_size(64, 2.0),
    )
    folder = tmp_path_factory.mktemp("grok-vocab")
    params = random_parameters(config, seed=0)
    write_converted(folder / "ckpt", config.to_dict(), [(n, v.nbytes) for n, v in params.items()], params.__getitem__,
                    tokenizer=tokenizer)
    export_gguf(folder / "ckpt", folder / "vocab.gguf", out_type="f16")
    server = llama_cpp.LlamaServer(folder / "vocab.gguf", folder / "server.log", slots=1, slot_context=256)
    server.start()
    yield server
    server.kill()


@pytest.mark.parametrize("text", TEXTS)
def test_llama_cpp_tokenizes_as_sentencepiece_does(grok_tokenizer_server, text):
    ours = Tokenizer(GOLDEN / "tokenizer.model")
    request = urllib.request.Request(
        f"{grok_tokenizer_server.url}/tokenize", data=json.dumps({"content": text, "add_special": False}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        theirs = json.loads(response.read())["tokens"]
    assert theirs == ours.encode(text)
    if text == TEXTS[0]:  # ../shared/grok1/README.md's fixture
        assert theirs == [422, 3033, 356, 1180, 333, 9072, 360, 2175, 391, 359, 1805]
