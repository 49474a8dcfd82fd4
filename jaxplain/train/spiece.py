"""A SentencePiece vocabulary of the training captions, saved as a SigLIP tokenizer.

SigLIP checkpoints carry a SentencePiece model (``spiece.model``) that transformers' ``SiglipTokenizer``
runs after lowercasing the text and removing its punctuation. :func:`write_caption_spiece` trains one on the
caption space and the zero-shot prompts, deterministically (one thread, fixed seed sentences), and saves it
with ``SiglipTokenizer.save_pretrained``, so the directory loads in jaxplain
(:class:`jaxplain.data.siglip_inputs.SiglipTokenizer`) and in transformers alike.
"""

from __future__ import annotations

import re
import string
import tempfile
from collections.abc import Iterable
from pathlib import Path

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
"""SigLIP's layout of the special pieces: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2 (no start token)."""

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def canonical(text: str) -> str:
    """Text as SigLIP's tokenizer sees it before SentencePiece: lowercased, ASCII punctuation removed, runs of
    white space one space."""
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


def caption_corpus() -> list[str]:
    """The lines the vocabulary is trained on: every caption of the training caption space, every class
    prompt of the default templates, and the letters and digits (so any ASCII word has pieces)."""
    from jaxplain.data.captions import CaptionSpace
    from jaxplain.data.fashion_mnist import CLASS_NAMES
    from jaxplain.zeroshot import DEFAULT_TEMPLATES

    lines = CaptionSpace().table_texts()
    lines += [t.format(c) for t in DEFAULT_TEMPLATES for c in CLASS_NAMES]
    lines += [" ".join(string.ascii_lowercase), " ".join(string.digits)]
    return lines


def write_caption_spiece(
    directory: str | Path, vocab_size: int, context: int, lines: Iterable[str] | None = None
) -> int:
    """Train a BPE SentencePiece model on ``lines`` (default :func:`caption_corpus`) and save it in
    ``directory`` as a transformers ``SiglipTokenizer`` (``spiece.model``, ``tokenizer_config.json``,
    ``special_tokens_map.json``) with ``model_max_length=context``.

    ``vocab_size`` is an upper bound: a corpus with fewer distinct pieces gets fewer (SentencePiece's
    ``hard_vocab_limit=False``). Returns the number of token ids.
    """
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(canonical(t) for t in (lines or caption_corpus())) + "\n", encoding="utf-8")
        prefix = str(Path(tmp) / "spiece")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=prefix,
            model_type="bpe",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            pad_id=PAD_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            character_coverage=1.0,
            num_threads=1,
            minloglevel=2,
        )
        tokenizer = SiglipTokenizer(vocab_file=prefix + ".model", model_max_length=context)
        tokenizer.save_pretrained(str(out))
    return len(tokenizer)
