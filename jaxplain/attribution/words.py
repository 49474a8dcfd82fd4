"""From word pieces to words: which word each token belongs to, and word scores as sums of token scores.

A text's words lie between positions ``first`` and ``stop`` (the family's
:attr:`~jaxplain.models.family.Family.text_word_span`). Word pieces mark word boundaries one of two ways:
CLIP's BPE marks the last piece of every word with ``</w>`` (a word is a run of tokens up to and including
one that ends with it); SentencePiece (SigLIP) marks the first piece of every word with ``▁`` (a word is a
run of tokens from one that begins with it). The start and end-of-text tokens and the padding belong to no
word (index −1).
"""

from __future__ import annotations

import numpy as np

from jaxplain.data.tokenize import Tokenizer

END_OF_WORD = "</w>"


def token_words(
    tokenizer: Tokenizer,
    ids: np.ndarray,
    eos: np.ndarray,
    first: np.ndarray | int = 1,
    *,
    begins: str = "",
    ends: str = END_OF_WORD,
) -> tuple[list[list[str]], np.ndarray, list]:
    """Tokens, word index per token and words of each text.

    Args:
      tokenizer: the model's tokenizer (anything with its transformers tokenizer as ``hf``).
      ids: ``[N, T]`` token ids.
      eos: ``[N]`` position of each text's end-of-text token (its words stop before it).
      first: ``[N]`` (or one for all) position of each text's first word token (1 after CLIP's start token).
      begins: a piece that begins with it opens a word (SentencePiece's ``▁``); empty: unused.
      ends: a piece that ends with it closes a word (CLIP's ``</w>``); empty: unused.

    Returns:
      ``(tokens, index, words)``: per text its token strings (up to and including end-of-text), an
      ``[N, T]`` int32 word index (−1 outside words) and per text its list of words.
    """
    hf = tokenizer.hf
    index = np.full(ids.shape, -1, np.int32)
    firsts = np.broadcast_to(np.asarray(first), (len(ids),))
    all_tokens, all_words = [], []

    def close(current, words):
        text = hf.convert_tokens_to_string(current)
        words.append((text.replace(ends, " ") if ends else text).strip())
        current.clear()

    for i, row in enumerate(np.asarray(ids)):
        end = int(eos[i])
        pieces = hf.convert_ids_to_tokens([int(t) for t in row[: end + 1]])
        words, current = [], []
        for pos in range(int(firsts[i]), end):
            if current and begins and pieces[pos].startswith(begins):
                close(current, words)
            current.append(pieces[pos])
            index[i, pos] = len(words)
            if (ends and pieces[pos].endswith(ends)) or pos == end - 1:
                close(current, words)
        all_tokens.append(pieces)
        all_words.append(words)
    return all_tokens, index, all_words


def word_scores(tokens: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``[count]`` word scores: the sum of the token scores ``[T]`` of each word (``index`` ``[T]``)."""
    out = np.zeros(count, np.float64)
    inside = index >= 0
    np.add.at(out, index[inside], tokens[inside])
    return out.astype(np.float32)
