"""The SentencePiece tokenizer, a detokeniser for streaming, and `common_prefix` of token id lists
(the prefix cache's comparison, torch-free so that chat/prompts.py can use it too).

Grok-1's tokenizer is a byte-fallback BPE: a character missing from the vocabulary is spelled as
UTF-8 byte pieces (`<0xF0>` `<0x9F>` `<0x98>` `<0x80>` for one emoji), so a single token may hold
part of a character. Words carry their leading space as "▁", which SentencePiece drops from the
first piece of whatever it decodes.
"""

from pathlib import Path

import sentencepiece as spm

REPLACEMENT_CHAR = "\ufffd"  # what SentencePiece decodes an incomplete UTF-8 sequence to


class Tokenizer:
    def __init__(self, model_file: str | Path):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size: int = self.sp.vocab_size()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()

    def encode(self, text: str) -> list[int]:
        """Token ids without BOS, as the reference encodes prompts."""
        return self.sp.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)


class StreamDecoder:
    """Incremental detokeniser: the texts returned by push() and flush() add up to decode(all ids).

    It decodes a small window of ids: the ones already returned (as context, so a word's leading
    "▁" becomes a space, and a window always drops the same first-piece space from both decodes)
    plus the new ones. Text is returned only once it no longer ends in an incomplete character.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []  # the window
        self.done = 0  # ids[:done] is text already returned

    def push(self, token_id: int) -> str:
        """The text completed by this token; "" while it is inside a character."""
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[: self.done])
        text = self.tokenizer.decode(self.ids)
        if len(text) <= len(before) or text.endswith(REPLACEMENT_CHAR):
            return ""
        # Keep the last returned ids as the context of the next window.
        self.ids = self.ids[self.done :]
        self.done = len(self.ids)
        return text[len(before) :]

    def flush(self) -> str:
        """Whatever is left, an incomplete character included (as U+FFFD); then start afresh."""
        text = self.tokenizer.decode(self.ids)[len(self.tokenizer.decode(self.ids[: self.done])) :]
        self.ids, self.done = [], 0
        return text


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix, by bisection over C-speed list comparisons."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
