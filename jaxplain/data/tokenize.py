"""Tokenisation with a checkpoint's own ``CLIPTokenizer``, padded to the model's context length."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from jaxplain.errors import CheckpointError, InputError

TOKENIZER_FILES = ("tokenizer.json", "vocab.json")


def bundled_bpe_dir() -> Path:
    """The directory of CLIP's standard BPE vocabulary shipped with jaxplain (49,408 tokens)."""
    return Path(str(resources.files("jaxplain") / "assets" / "clip-bpe"))


def _short(text: str, n: int = 50) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


class Tokenizer:
    """Turns texts into ``[N, context_length]`` int32 token ids for the text tower.

    Each row is ``<|startoftext|> tokens <|endoftext|>`` then padding. A text longer than the context
    is truncated (its end-of-text token kept) with a warning that names it; an empty text is an
    :class:`InputError`.
    """

    def __init__(self, hf_tokenizer, context_length: int):
        self.hf = hf_tokenizer
        self.context_length = context_length
        self.eos_id = int(hf_tokenizer.eos_token_id)
        self.bos_id = int(hf_tokenizer.bos_token_id)
        pad = hf_tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else int(pad)

    @classmethod
    def from_directory(cls, directory: str | Path, context_length: int) -> Tokenizer:
        """Load the tokenizer files of a checkpoint directory (``tokenizer.json`` or ``vocab.json`` +
        ``merges.txt``)."""
        from transformers import CLIPTokenizer

        try:
            hf = CLIPTokenizer.from_pretrained(str(directory))
        except (OSError, ValueError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{directory}: cannot load its CLIP tokenizer ({e})") from None
        return cls(hf, context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def ids(self, text: str, name: str = "text") -> list[int]:
        """Token ids of one text with start and end tokens, truncated to the context (with a warning)."""
        if not isinstance(text, str):
            raise InputError(f"{name}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"{name}: empty text")
        ids = self.hf(text).input_ids
        if len(ids) > self.context_length:
            warnings.warn(
                f"{name} {_short(text)} has {len(ids)} tokens; truncated to the context length {self.context_length}",
                stacklevel=3,
            )
            ids = [*ids[: self.context_length - 1], self.eos_id]
        return ids

    def pad(self, ids: list[int]) -> np.ndarray:
        row = np.full(self.context_length, self.pad_id, np.int32)
        row[: len(ids)] = ids
        return row

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → ``[N, context_length]`` int32; the first bad text raises :class:`InputError`."""
        if isinstance(texts, str):
            raise InputError("expected a list of texts, got a single string (wrap it in a list)")
        rows = [self.pad(self.ids(t, f"text {i}")) for i, t in enumerate(texts)]
        return np.stack(rows) if rows else np.zeros((0, self.context_length), np.int32)


def write_reduced_bpe(out_dir: str | Path, n_merges: int, source: str | Path | None = None) -> int:
    """Write a CLIP BPE vocabulary that keeps only the first ``n_merges`` merges.

    BPE applies merges in rank order, so the first ``n`` merges form a complete tokenizer: every text
    still tokenises (into more pieces), with byte-level tokens as the fallback. The vocabulary holds
    the 512 byte tokens, one token per kept merge, then ``<|startoftext|>`` and ``<|endoftext|>``.
    Returns the vocabulary size.
    """
    source = Path(source) if source else bundled_bpe_dir()
    vocab = json.loads((source / "vocab.json").read_text(encoding="utf-8"))
    lines = (source / "merges.txt").read_text(encoding="utf-8").splitlines()
    header, merges = lines[0], lines[1 : 1 + n_merges]
    by_id = sorted(vocab, key=vocab.get)
    kept = [*by_id[: 512 + len(merges)], "<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(kept)}, ensure_ascii=False), "utf-8")
    (out / "merges.txt").write_text("\n".join([header, *merges]) + "\n", "utf-8")
    return len(kept)
