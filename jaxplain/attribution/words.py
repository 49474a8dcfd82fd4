"""From BPE tokens to words: which word each token belongs to, and word scores as sums of token scores.

CLIP's BPE marks the last piece of every word with ``</w>``, so a word is a run of tokens up to and
including one that ends with it. The start and end-of-text tokens and the padding belong to no word
(index −1).
"""

from __future__ import annotations

import numpy as np

from jaxplain.data.tokenize import Tokenizer

END_OF_WORD = "</w>"


def token_words(tokenizer: Tokenizer, ids: np.ndarray, eos: np.ndarray) -> tuple[list[list[str]], np.ndarray, list]:
    """Tokens, word index per token and words of each text.

    Args:
      tokenizer: the model's tokenizer.
      ids: ``[N, T]`` token ids.
      eos: ``[N]`` position of each text's end-of-text token.

    Returns:
      ``(tokens, index, words)``: per text its token strings (up to and including end-of-text), an
      ``[N, T]`` int32 word index (−1 outside words) and per text its list of words.
    """
    hf = tokenizer.hf
    index = np.full(ids.shape, -1, np.int32)
    all_tokens, all_words = [], []
    for i, row in enumerate(np.asarray(ids)):
        end = int(eos[i])
        pieces = hf.convert_ids_to_tokens([int(t) for t in row[: end + 1]])
        words, current = [], []
        for pos in range(1, end):
            current.append(pieces[pos])
            index[i, pos] = len(words)
            if pieces[pos].endswith(END_OF_WORD) or pos == end - 1:
                words.append(hf.convert_tokens_to_string(current).replace(END_OF_WORD, " ").strip())
                current = []
        all_tokens.append(pieces)
        all_words.append(words)
    return all_tokens, index, all_words


def word_scores(tokens: np.ndarray, index: np.ndarray, count: int) -> np.ndarray:
    """``[count]`` word scores: the sum of the token scores ``[T]`` of each word (``index`` ``[T]``)."""
    out = np.zeros(count, np.float64)
    inside = index >= 0
    np.add.at(out, index[inside], tokens[inside])
    return out.astype(np.float32)
