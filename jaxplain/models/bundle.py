"""The model bundle: config, params, tokenizer and preprocessing, with batched encoding helpers.

The helpers are host-side conveniences (decoding, batching, progress) around the pure jitted
functions of :mod:`jaxplain.models.clip`; research code can call those directly with
``model.params`` and ``model.config``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from jaxplain.batching import bucket, chunks, map_bucketed, pad_rows
from jaxplain.data.images import ImageLike, ImageProcessing
from jaxplain.data.tokenize import Tokenizer
from jaxplain.models import clip
from jaxplain.models.config import ClipConfig

encode_image_jit = jax.jit(clip.encode_image, static_argnames="config")
encode_text_jit = jax.jit(clip.encode_text, static_argnames="config")

IMAGE_BATCH = 64
TEXT_BATCH = 256


def text_length_bucket(n: int) -> int:
    """The token length a batch whose longest text has ``n`` tokens is cut to: ``n`` itself up to 16, then
    rounded up to a quarter of the power of two below it (20, 24, 28, 32, 40, 48, ...), so padding wastes
    less than a quarter of the work and a tower compiles for a few dozen lengths at most."""
    if n <= 16:
        return max(n, 1)
    step = (1 << (n.bit_length() - 1)) // 4
    return -(-n // step) * step


def fingerprint(config: ClipConfig, params: clip.Params) -> str:
    """A short hash of the config and float32 weights: two models share it only if they compute the same
    function. Banks and indexes record it so they cannot be mixed with another model's. Either layout of the
    layers (:func:`jaxplain.models.clip.unstack_layers`) gives the same hash."""
    params = clip.stack_layers(params)
    h = hashlib.blake2b(digest_size=12)
    h.update(json.dumps(config.to_hf_dict(), sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A loaded CLIP model. Build it with :func:`jaxplain.load`.

    Attributes:
      name: what it was loaded from (a path or a hub id).
      config: the frozen :class:`ClipConfig`.
      params: the weights as a pytree of jax arrays (see :func:`jaxplain.models.clip.init_params`).
      tokenizer: turns texts into ``[N, context_length]`` ids.
      processing: turns images into ``[N, 3, H, W]`` pixels.
      fingerprint: a hash of config and weights (see :func:`fingerprint`).
      directory: the checkpoint directory it was read from, if any.
    """

    name: str
    config: ClipConfig
    params: clip.Params
    tokenizer: Tokenizer
    processing: ImageProcessing
    fingerprint: str
    directory: Path | None = None

    @property
    def embed_dim(self) -> int:
        """Width ``E`` of the shared embedding space."""
        return self.config.projection_dim

    @property
    def logit_scale(self) -> float:
        """The temperature ``s = exp(logit_scale)`` applied to cosine similarities."""
        return float(clip.logit_scale(self.params))

    def with_params(self, params: clip.Params, same_model: bool = False) -> Model:
        """The bundle with other weights. Their fingerprint is recomputed, unless ``same_model`` says they
        are these weights in another dtype (banks made by this model then still serve it)."""
        fp = self.fingerprint if same_model else fingerprint(self.config, params)
        return dataclasses.replace(self, params=params, fingerprint=fp)

    @functools.cached_property
    def inference_params(self) -> clip.Params:
        """:attr:`params` with the layers unstacked (:func:`jaxplain.models.clip.unstack_layers`), which
        ``encode_*`` run on: the same numbers, faster for small batches on a CPU. Made on first use and
        kept; it holds a second copy of the layer weights."""
        return clip.unstack_layers(self.params)

    @functools.cached_property
    def text_cache(self) -> dict:
        """Embeddings of text sets this model encodes again and again (the prompt-ensembled class
        embeddings of :func:`jaxplain.zeroshot.class_embeddings`), kept with the model: a bundle with other
        weights is another object, with its own empty cache."""
        return {}

    def preprocess(self, images: Sequence[ImageLike]) -> np.ndarray:
        """Images → normalised pixels ``[N, 3, H, W]`` float32."""
        return self.processing(images)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → token ids ``[N, context_length]`` int32."""
        return self.tokenizer(texts)

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = IMAGE_BATCH) -> np.ndarray:
        """Pixels ``[N, 3, H, W]`` → unit-norm embeddings ``[N, E]`` float32, in bucketed batches."""
        params = self.inference_params
        fn = lambda x: encode_image_jit(params, x, config=self.config)  # noqa: E731
        return map_bucketed(fn, np.asarray(pixels, np.float32), batch_size).astype(np.float32)

    def encode_ids(self, token_ids: np.ndarray, batch_size: int = TEXT_BATCH) -> np.ndarray:
        """Token ids ``[N, T]`` → unit-norm embeddings ``[N, E]`` float32, in bucketed batches.

        Attention is causal, so nothing after a text's end-of-text token can change its embedding: each
        batch is cut after its longest text (the length rounded up by :func:`text_length_bucket`, to
        bound recompilation), and when there is more than one batch the texts are batched in order of
        length, so that short texts are not padded to the length of long ones. The output is in input order.
        """
        ids = np.asarray(token_ids, np.int32)
        params = self.inference_params
        fn = lambda x: encode_text_jit(params, x, config=self.config)  # noqa: E731
        if not ids.size:
            return map_bucketed(fn, ids, batch_size).astype(np.float32)
        ends = np.asarray(clip.eos_positions(ids, self.config)) + 1
        order = np.argsort(ends, kind="stable") if len(ids) > batch_size else np.arange(len(ids))
        out = np.zeros((len(ids), self.embed_dim), np.float32)
        for s in chunks(len(ids), batch_size):
            rows = order[s]
            length = min(ids.shape[1], text_length_bucket(int(ends[rows].max())))
            x = pad_rows(ids[rows, :length], bucket(len(rows), batch_size))
            out[rows] = np.asarray(fn(x))[: len(rows)]
        return out

    def encode_images(self, images: Sequence[ImageLike] | np.ndarray, batch_size: int = IMAGE_BATCH) -> np.ndarray:
        """Images (paths, bytes, PIL images, arrays) or a pixel array ``[N, 3, H, W]`` → ``[N, E]``.

        Decoding is done a batch at a time, so memory stays bounded for long lists.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return self.encode_pixels(images, batch_size)
        out = [
            self.encode_pixels(self.processing(list(images[i : i + batch_size])), batch_size)
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = TEXT_BATCH) -> np.ndarray:
        """Texts → unit-norm embeddings ``[N, E]`` float32."""
        return self.encode_ids(self.tokenize(texts), batch_size)

    def similarity(self, images: Sequence[ImageLike], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity ``[N_images, N_texts]`` between images and texts."""
        return self.encode_images(images) @ self.encode_texts(texts).T

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Model({self.name!r}, vision {c.vision.num_layers}×{c.vision.hidden_size} "
            f"patch {c.vision.patch_size} @ {c.vision.image_size}px, text {c.text.num_layers}×"
            f"{c.text.hidden_size}, embed {c.projection_dim}, {clip.num_params(self.params):,} params, "
            f"fingerprint {self.fingerprint})"
        )
