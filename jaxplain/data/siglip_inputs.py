"""The inputs of SigLIP and SigLIP 2 checkpoints: their tokenizers and their image preprocessing.

Equal to transformers' processors for these checkpoints:

- :class:`SiglipTokenizer` runs the tokenizer a checkpoint directory carries, loaded offline by
  ``AutoTokenizer``: SigLIP's SentencePiece model (``spiece.model``: the text is lowercased, its ASCII
  punctuation removed and its runs of white space made one space before SentencePiece sees it; ``</s>`` is
  appended and pads the row) or SigLIP 2's Gemma tokenizer (``tokenizer.json``: lowercased when the
  directory's ``config.json`` says ``siglip2``, ``<eos>`` appended, ``<pad>`` pads). Rows have the fixed
  length SigLIP was trained with (``padding="max_length"``, 64 tokens), padded on the side the tokenizer
  pads.
- :class:`SiglipImageProcessing` is ``SiglipImageProcessor``'s preprocessing: a resize to a square
  ``height`` × ``width`` that does not keep the aspect ratio (bicubic or bilinear, as the config says),
  rescaling to ``[0, 1]`` and normalising with mean = std = 0.5 (so pixels lie in ``[-1, 1]``); no centre
  crop. Items are decoded by :func:`jaxplain.data.images.load_rgb`, with its guards against hostile files.

SigLIP 2's variable-resolution ("NaFlex", ``Siglip2ImageProcessor``) preprocessing is not handled here:
its config is refused with a :class:`~jaxplain.errors.CheckpointError` that says so.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxplain.data.images import (
    RESAMPLE_FILTERS,
    ImageLike,
    ImageProcessing,
    _json_kind,
    _number,
    _path_problem,
    _positive_int,
    _show,
    describe,
)
from jaxplain.errors import CheckpointError, InputError

SIGLIP_CONTEXT_LENGTH = 64
"""The text length SigLIP and SigLIP 2 were trained with (``padding="max_length"``, ``max_length=64``)."""
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
SIGLIP_PROCESSOR_TYPES = ("SiglipImageProcessor", "SiglipImageProcessorFast", "SiglipImageProcessorPil")
_NAFLEX_TYPES = ("Siglip2ImageProcessor", "Siglip2ImageProcessorFast", "Siglip2ImageProcessorPil")
_MAX_CONTEXT = 100_000  # a tokenizer's model_max_length above this is transformers' "no limit" placeholder


def _short(text: str, n: int = 50) -> str:
    return repr(text if len(text) <= n else text[: n - 1] + "…")


def _named_class(directory: Path) -> str | None:
    """The ``tokenizer_class`` a directory's ``tokenizer_config.json`` names, or None (no file, unreadable)."""
    try:
        d = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = d.get("tokenizer_class") if isinstance(d, dict) else None
    return name if isinstance(name, str) else None


class SiglipTokenizer:
    """Turns texts into ``[N, context_length]`` int32 token ids for a SigLIP or SigLIP 2 text tower.

    Wraps the checkpoint's own transformers tokenizer: each row is the tokens of the text then its
    end-of-sequence token (what the tokenizer adds), padded with ``pad_id`` to ``context_length`` on the
    tokenizer's padding side, as ``tokenizer(texts, padding="max_length", max_length=context_length,
    truncation=True)`` gives. A text longer than the context is truncated (its end-of-sequence token kept)
    with a warning that names it; a text that is not a string, is empty, or has no tokens once the tokenizer
    has canonicalised it (SigLIP's removes punctuation: ``"!!!"`` has none) is an :class:`InputError`.
    """

    def __init__(self, hf_tokenizer, context_length: int = SIGLIP_CONTEXT_LENGTH):
        if not _positive_int(context_length) or context_length < 2:
            raise InputError(f"context_length must be a whole number of at least 2, got {context_length!r}")
        self.hf = hf_tokenizer
        self.context_length = context_length
        if hf_tokenizer.eos_token_id is None:
            raise CheckpointError(f"{type(hf_tokenizer).__name__}: the tokenizer has no end-of-sequence token")
        self.eos_id = int(hf_tokenizer.eos_token_id)
        pad = hf_tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad is None else int(pad)
        self.padding_side = "left" if hf_tokenizer.padding_side == "left" else "right"
        self._specials = frozenset(int(i) for i in hf_tokenizer.all_special_ids)

    @classmethod
    def from_directory(cls, directory: str | Path, context_length: int | None = None) -> SiglipTokenizer:
        """Load the tokenizer of a checkpoint directory offline (``spiece.model``, or ``tokenizer.json`` /
        ``tokenizer.model``, with ``tokenizer_config.json`` and, for SigLIP 2, ``config.json``).

        ``context_length`` defaults to the tokenizer's ``model_max_length`` where it sets one, else 64. A
        directory that is missing, lacks tokenizer files or holds broken ones raises
        :class:`CheckpointError` naming it; so does a SentencePiece model when the ``sentencepiece``
        package is not installed.
        """
        from transformers import AutoTokenizer

        path = Path(directory)
        if not path.is_dir():
            why = "no such directory" if not path.exists() else "not a directory"
            raise CheckpointError(f"{directory}: cannot load its tokenizer: {why}")
        files = ("spiece.model", "tokenizer.json", "tokenizer.model")
        if not any((path / f).is_file() for f in files):
            raise CheckpointError(f"{directory}: no tokenizer files (expected one of {', '.join(files)})")
        if (path / "spiece.model").is_file() and not (path / "tokenizer.json").is_file():
            if importlib.util.find_spec("sentencepiece") is None:
                raise CheckpointError(
                    f"{directory}: its tokenizer is a SentencePiece model (spiece.model); "
                    "install the sentencepiece package to read it (pip install sentencepiece)"
                )
        try:
            if _named_class(path) == "SiglipTokenizer":
                # SigLIP's own class, loaded directly: AutoTokenizer would also build a default model config
                # and warn about its token ids, which have nothing to do with this checkpoint
                from transformers import SiglipTokenizer as HfSiglipTokenizer

                hf = HfSiglipTokenizer.from_pretrained(str(path), local_files_only=True)
            else:
                hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{directory}: cannot load its tokenizer ({type(e).__name__}: {e})") from None
        if hf is None or not callable(hf):
            raise CheckpointError(f"{directory}: cannot load its tokenizer (transformers found none)")
        if context_length is None:
            n = getattr(hf, "model_max_length", None)
            context_length = n if _positive_int(n) and 2 <= n <= _MAX_CONTEXT else SIGLIP_CONTEXT_LENGTH
        return cls(hf, context_length)

    @property
    def vocab_size(self) -> int:
        """The number of token ids, added tokens included."""
        return len(self.hf)

    @property
    def kind(self) -> str:
        """The transformers tokenizer class in use (``SiglipTokenizer``, ``Siglip2Tokenizer``, ``GemmaTokenizer``…)."""
        return type(self.hf).__name__

    def ids(self, text: str, name: str = "text") -> list[int]:
        """Token ids of one text with its end-of-sequence token, truncated to the context (with a warning)."""
        if not isinstance(text, str):
            raise InputError(f"{name}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InputError(f"{name}: empty text")
        ids = list(self.hf(text, verbose=False).input_ids)
        if not any(i not in self._specials for i in ids):
            raise InputError(
                f"{name} {_short(text)}: no tokens once the tokenizer has canonicalised it "
                f"({self.kind} lowercases it and may remove its punctuation)"
            )
        if len(ids) > self.context_length:
            warnings.warn(
                f"{name} {_short(text)} has {len(ids)} tokens; truncated to the context length {self.context_length}",
                stacklevel=3,
            )
            ids = list(self.hf(text, truncation=True, max_length=self.context_length, verbose=False).input_ids)
        return ids

    def pad(self, ids: Sequence[int]) -> np.ndarray:
        """One row of ids → ``[context_length]`` int32, padded with ``pad_id`` on the tokenizer's side."""
        if len(ids) > self.context_length:
            raise InputError(f"{len(ids)} token ids do not fit the context length {self.context_length}")
        row = np.full(self.context_length, self.pad_id, np.int32)
        if len(ids):
            if self.padding_side == "left":
                row[self.context_length - len(ids) :] = ids
            else:
                row[: len(ids)] = ids
        return row

    def batch(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → ``[N, context_length]`` int32; the first bad text raises :class:`InputError` naming it."""
        if isinstance(texts, str):
            raise InputError("expected a list of texts, got a single string (wrap it in a list)")
        rows = [self.pad(self.ids(t, f"text {i}")) for i, t in enumerate(texts)]
        return np.stack(rows) if rows else np.zeros((0, self.context_length), np.int32)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """The same as :meth:`batch` (the interface of :class:`jaxplain.data.tokenize.Tokenizer`)."""
        return self.batch(texts)


@dataclasses.dataclass(frozen=True)
class SiglipImageProcessing:
    """The preprocessing of a SigLIP (or fixed-resolution SigLIP 2) checkpoint, its ``preprocessor_config.json``.

    Each image is converted to RGB (transparency composited onto white), resized to ``height`` × ``width``
    without keeping its aspect ratio, rescaled by ``rescale_factor`` and normalised with ``mean`` and
    ``std``. ``resample`` is a PIL filter code (3 bicubic, SigLIP's; 2 bilinear).
    """

    height: int = 224
    width: int = 224
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True

    @classmethod
    def for_image_size(cls, size: int) -> SiglipImageProcessing:
        """SigLIP's standard preprocessing for a model that takes ``size``×``size`` images."""
        return cls(height=size, width=size)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "preprocessor_config.json") -> SiglipImageProcessing:
        """Read a ``SiglipImageProcessor`` ``preprocessor_config.json`` dictionary, strictly.

        A value of the wrong type or an impossible one raises :class:`CheckpointError` naming ``source`` and
        the key, e.g. ``preprocessor_config.json: 'size' must be {height, width} of positive integers, got
        {"shortest_edge": 224}``; so does a setting this preprocessing does not have (``do_center_crop`` or
        ``do_pad`` true) and a config of another processor (``image_processor_type``; SigLIP 2's NaFlex
        ``Siglip2ImageProcessor`` is named as such). A key that is absent or null keeps its default.
        """
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: must be a JSON object of settings, got {_json_kind(d)}")

        def bad(key: str, want: str) -> CheckpointError:
            return CheckpointError(f"{source}: {key!r} must be {want}, got {_show(d[key])}")

        kind = d.get("image_processor_type")
        if kind is not None:
            if kind in _NAFLEX_TYPES:
                raise CheckpointError(
                    f"{source}: 'image_processor_type' {kind} is SigLIP 2's variable-resolution (NaFlex) "
                    "preprocessing, which jaxplain does not do; use a fixed-resolution checkpoint"
                )
            if kind not in SIGLIP_PROCESSOR_TYPES:
                raise bad("image_processor_type", f"one of {', '.join(SIGLIP_PROCESSOR_TYPES)}")
        kw: dict[str, Any] = {}
        size = d.get("size")
        if size is not None:
            if not (isinstance(size, dict) and _positive_int(size.get("height")) and _positive_int(size.get("width"))):
                raise bad("size", "{height, width} of positive integers")
            if set(size) - {"height", "width"}:
                raise bad("size", "{height, width} of positive integers (and no other keys)")
            kw.update(height=size["height"], width=size["width"])
        for key, field, positive in (("image_mean", "mean", False), ("image_std", "std", True)):
            if d.get(key) is None:
                continue
            v = d[key]
            values = [v] * 3 if _number(v) else v if isinstance(v, list) and len(v) == 3 else None
            if values is None or not all(_number(x) and (x > 0 or not positive) for x in values):
                raise bad(key, "3 positive numbers (one per channel)" if positive else "3 numbers (one per channel)")
            kw[field] = tuple(float(x) for x in values)
        for key in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb", "do_center_crop", "do_pad"):
            if d.get(key) is not None:
                if not isinstance(d[key], bool):
                    raise bad(key, "true or false")
                if key in ("do_center_crop", "do_pad"):
                    if d[key]:
                        raise bad(key, "false (SigLIP's preprocessing resizes to the square; it has no crop or pad)")
                elif key == "do_convert_rgb":
                    if not d[key]:
                        raise bad(key, "true (the model takes RGB images; jaxplain always converts them)")
                else:
                    kw[key] = d[key]
        if d.get("rescale_factor") is not None:
            if not (_number(d["rescale_factor"]) and d["rescale_factor"] > 0):
                raise bad("rescale_factor", "a positive number")
            kw["rescale_factor"] = float(d["rescale_factor"])
        if d.get("resample") is not None:
            if type(d["resample"]) is not int or d["resample"] not in RESAMPLE_FILTERS:
                codes = ", ".join(f"{k} {v}" for k, v in RESAMPLE_FILTERS.items())
                raise bad("resample", f"a PIL resampling filter ({codes})")
            kw["resample"] = int(d["resample"])
        return cls(**kw)

    @classmethod
    def from_directory(cls, directory: str | Path) -> SiglipImageProcessing:
        """The preprocessing of a checkpoint directory, or SigLIP's standard one (224 × 224) if it has no
        ``preprocessor_config.json``. An unreadable file, invalid JSON, or a bad value raise
        :class:`CheckpointError` naming the file (and the line and column, or the key)."""
        path = Path(directory) / "preprocessor_config.json"
        if not path.exists() and not path.is_symlink():
            return cls()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            why = _path_problem(path, e) if isinstance(e, OSError) else f"not UTF-8 text ({e.reason} at byte {e.start})"
            raise CheckpointError(f"{path}: cannot read it: {why}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        return cls.from_hf_dict(d, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` content for these settings (``SiglipImageProcessor``'s)."""
        return {
            "image_processor_type": "SiglipImageProcessor",
            "processor_class": "SiglipProcessor",
            "do_resize": self.do_resize,
            "size": {"height": self.height, "width": self.width},
            "resample": self.resample,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.mean),
            "image_std": list(self.std),
            "do_convert_rgb": True,
        }

    @property
    def image_processing(self) -> ImageProcessing:
        """These steps as jaxplain's general :class:`~jaxplain.data.images.ImageProcessing` (a resize to the
        square, no centre crop), e.g. for :func:`jaxplain.data.fashion_mnist.pixel_table`."""
        return self._steps

    @functools.cached_property
    def _steps(self) -> ImageProcessing:
        """jaxplain's CLIP preprocessing set to these steps: a resize to (height, width), no centre crop."""
        return ImageProcessing(
            shortest_edge=None,
            height=self.height,
            width=self.width,
            crop=(self.height, self.width),
            mean=self.mean,
            std=self.std,
            resample=self.resample,
            do_resize=self.do_resize,
            do_center_crop=False,
            do_rescale=self.do_rescale,
            rescale_factor=self.rescale_factor,
            do_normalize=self.do_normalize,
        )

    def pixels(self, item: ImageLike, name: str | None = None) -> np.ndarray:
        """One item → normalised float32 pixels ``[3, height, width]``; a bad item raises :class:`InputError`
        naming it. (With ``do_resize`` false the image keeps its own size.)"""
        return self._steps.pixels(item, name or describe(item))

    def __call__(self, items: Sequence[ImageLike]) -> np.ndarray:
        """Items → pixels ``[N, 3, height, width]``; the first bad item raises :class:`InputError` naming it.

        For batch jobs that must go on past bad items, call :meth:`pixels` per item. With ``do_resize``
        false, an image whose size differs from the first one's is an :class:`InputError` naming it.
        """
        if isinstance(items, (str, Path, bytes)):
            raise InputError("expected a list of images, got a single one (wrap it in a list)")
        if self.do_resize or not len(items):
            return self._steps(items)
        rows = []
        for i, x in enumerate(items):
            rows.append(self.pixels(x, describe(x, i)))
            if rows[-1].shape != rows[0].shape:
                (_, h, w), (_, h0, w0) = rows[-1].shape, rows[0].shape
                raise InputError(
                    f"{describe(x, i)}: {w}×{h} pixels, but do_resize is false and the first image is {w0}×{h0}"
                )
        return np.stack(rows)
