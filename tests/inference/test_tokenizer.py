"""The tokenizer wrapper and the streaming detokeniser, against Grok-1's released tokenizer.model."""

from pathlib import Path

import pytest

from inference.tokenizer import StreamDecoder, Tokenizer

TOKENIZER = Path(__file__).resolve().parents[2].parent / "shared/grok1/tokenizer.model"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    if not TOKENIZER.is_file():
        pytest.skip(f"Grok-1's tokenizer.model not found at {TOKENIZER} (../shared/grok1 from the repository root)")
    return Tokenizer(TOKENIZER)


def test_encodes_like_the_reference_without_bos(tokenizer):
    ids = tokenizer.encode("The answer to life the universe and everything is of course")
    assert ids == [422, 3033, 356, 1180, 333, 9072, 360, 2175, 391, 359, 1805]
    assert tokenizer.decode(ids) == "The answer to life the universe and everything is of course"


def test_special_ids(tokenizer):
    assert (tokenizer.vocab_size, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (131072, 0, 1, 2)


def stream(tokenizer: Tokenizer, ids: list[int]) -> tuple[list[str], str]:
    decoder = StreamDecoder(tokenizer)
    return [decoder.push(i) for i in ids], decoder.flush()


@pytest.mark.parametrize(
    "text",
    [
        "Rocket 🚀 to the moon 🌕!",
        "日本語のテキストと中文混在",  # 混 is spelled in bytes
        "naïve café — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, 👨‍👩‍👧 family, 🇫🇷 flag",
        "€100 in ₿ and ㊙",
        "😀",
    ],
)
def test_stream_decoder_is_utf8_safe(tokenizer, text):
    ids = tokenizer.encode(text)
    assert any(tokenizer.sp.id_to_piece(i).startswith("<0x") for i in ids), "the text should need byte-fallback pieces"
    pushed, rest = stream(tokenizer, ids)
    assert "".join(pushed) + rest == tokenizer.decode(ids) == text
    assert rest == ""  # a complete text leaves nothing behind
    for i, out in enumerate(pushed):
        assert "\ufffd" not in out
        assert text.startswith("".join(pushed[: i + 1]))  # every push is final: whole characters only


def test_stream_decoder_holds_a_split_character_until_it_completes(tokenizer):
    ids = tokenizer.encode("a😀")  # "▁a" then the emoji's four byte pieces
    pieces = [tokenizer.sp.id_to_piece(i) for i in ids]
    assert pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    pushed, _ = stream(tokenizer, ids)
    assert pushed[-4:] == ["", "", "", "😀"]


def test_flush_returns_an_incomplete_character_as_decode_does(tokenizer):
    ids = tokenizer.encode("ok😀")[:-2]  # cut inside the emoji
    pushed, rest = stream(tokenizer, ids)
    assert "".join(pushed) == "ok"
    assert "".join(pushed) + rest == tokenizer.decode(ids)
    assert "\ufffd" in rest


def test_stream_keeps_the_space_of_later_words(tokenizer):
    pushed, _ = stream(tokenizer, tokenizer.encode("The answer to life"))
    assert pushed == ["The", " answer", " to", " life"]  # only the first "▁" is dropped, as decode does
    text = "  two spaces,\n\nnew lines\tand\ttabs  "
    pushed, rest = stream(tokenizer, tokenizer.encode(text))
    assert "".join(pushed) + rest == text
