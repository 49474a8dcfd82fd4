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
from jax.sharding import Mesh

from jaxplain import sharding
from jaxplain.batching import bucket, chunks, map_bucketed, pad_rows
from jaxplain.data.images import ImageLike, ImageProcessing
from jaxplain.data.tokenize import Tokenizer
from jaxplain.errors import InputError
from jaxplain.models import clip
from jaxplain.models.config import ClipConfig
from jaxplain.models.family import CLIP, Family

# The CLIP encoders, jitted (kept under these names for research code; a model runs its family's own).
encode_image_jit = CLIP.image_jit
encode_text_jit = CLIP.text_jit
encode_image_sharded = CLIP.image_sharded
encode_text_sharded = CLIP.text_sharded

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


def tokenizer_identity(tokenizer: Tokenizer) -> dict:
    """What decides the ids a :class:`~jaxplain.data.tokenize.Tokenizer` gives: its context length and
    special ids, and the serialised tokenizer (vocabulary, merges, normalisation such as lowercasing,
    pre-tokenisation, the start and end tokens added), without the settings that do not change an id
    (its decoder, and the truncation and padding transformers sets call by call: jaxplain pads itself)."""
    hf = tokenizer.hf
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for key in ("version", "truncation", "padding", "decoder"):
            spec.pop(key, None)
    else:  # a tokenizer without a serialised form: its vocabulary
        spec = {"vocab": sorted(hf.get_vocab().items())}
    return {
        "context_length": tokenizer.context_length,
        "ids": [getattr(tokenizer, "bos_id", None), tokenizer.eos_id, tokenizer.pad_id],
        "tokenizer": spec,
    }


def fingerprint(
    config: ClipConfig,
    params: clip.Params,
    *,
    processing: ImageProcessing,
    tokenizer: Tokenizer | None,
    family: Family = CLIP,
) -> str:
    """A short hash of all that decides a model's embeddings: the config, the float32 weights, the image
    preprocessing (:meth:`~jaxplain.data.images.ImageProcessing.to_hf_dict`: sizes, crop, normalisation)
    and the tokenizer (:func:`tokenizer_identity`; None: none). Two models share it only if they give the
    same embeddings for the same images and texts. Banks and indexes record it so they cannot be mixed with
    another model's, or with the same weights fed differently. Either layout of the layers
    (:func:`jaxplain.models.clip.unstack_layers`) gives the same hash."""
    params = family.stack_layers(params)
    h = hashlib.blake2b(digest_size=12)
    if family is not CLIP:  # a CLIP model's hash is what it was before families were named
        h.update(family.name.encode())
    h.update(json.dumps(config.to_hf_dict(), sort_keys=True).encode())
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0], key=lambda kv: str(kv[0])):
        h.update(str(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    inputs = {
        "processing": processing.to_hf_dict(),
        "tokenizer": None if tokenizer is None else tokenizer_identity(tokenizer),
    }
    h.update(json.dumps(inputs, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def _agree_lengths(batches, ids: np.ndarray, per_call: int):
    """Batches re-cut so that every process of a job has the same shapes call by call: in each run of
    ``per_call`` batches, the longest token length any process has (every process has as many batches)."""
    out = []
    for g in range(0, len(batches), per_call):
        group = batches[g : g + per_call]
        length = sharding.max_over_processes(max(x.shape[1] for _, x, _ in group))
        b = max(b for _, _, b in group)
        out += [(rows, ids[rows, :length], b) for rows, _, _ in group]
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A loaded CLIP model. Build it with :func:`jaxplain.load`.

    Attributes:
      name: what it was loaded from (a path or a hub id).
      config: the frozen :class:`ClipConfig`.
      params: the weights as a pytree of jax arrays (see :func:`jaxplain.models.clip.init_params`).
      tokenizer: turns texts into ``[N, context_length]`` ids.
      processing: turns images into ``[N, 3, H, W]`` pixels.
      fingerprint: a hash of config, weights, preprocessing and tokenizer (see :func:`fingerprint`).
      directory: the checkpoint directory it was read from, if any.
    """

    name: str
    config: ClipConfig
    params: clip.Params
    tokenizer: Tokenizer
    processing: ImageProcessing
    fingerprint: str
    directory: Path | None = None
    family: Family = CLIP

    @property
    def embed_dim(self) -> int:
        """Width ``E`` of the shared embedding space."""
        return self.family.embed_dim(self.config)

    @property
    def logit_scale(self) -> float:
        """The temperature ``s = exp(logit_scale)`` applied to cosine similarities."""
        return float(self.family.logit_scale(self.params))

    @property
    def logit_bias(self) -> float:
        """The bias ``b`` added to every scaled similarity (SigLIP's; 0 for CLIP)."""
        return float(self.family.logit_bias(self.params))

    @property
    def decision(self) -> str:
        """How scores become probabilities: ``"softmax"`` over classes (CLIP) or ``"sigmoid"`` per class
        (SigLIP); see :mod:`jaxplain.models.family`."""
        return self.family.decision

    def require_softmax(self, what: str) -> None:
        """Refuse a use that is built on CLIP's softmax decision for a model whose decision differs (rather
        than explain a decision the model does not make)."""
        if self.decision != "softmax":
            raise InputError(
                f"{what} is not available yet for {self.name!r}, a {self.family.name} model: it reads the "
                f"softmax over classes, and this model decides by a {self.decision} per class"
            )

    def with_params(self, params: clip.Params, same_model: bool = False) -> Model:
        """The bundle with other weights. Their fingerprint is recomputed, unless ``same_model`` says they
        are these weights in another dtype (banks made by this model then still serve it)."""
        fp = (
            self.fingerprint
            if same_model
            else fingerprint(
                self.config, params, processing=self.processing, tokenizer=self.tokenizer, family=self.family
            )
        )
        return dataclasses.replace(self, params=params, fingerprint=fp)

    @functools.cached_property
    def inference_params(self) -> clip.Params:
        """:attr:`params` with the layers unstacked (:func:`jaxplain.models.clip.unstack_layers`), which
        ``encode_*`` run on: the same numbers, faster for small batches on a CPU. Made on first use and
        kept; it holds a second copy of the layer weights."""
        return self.family.unstack_layers(self.params)

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

    def params_on(self, mesh: Mesh) -> clip.Params:
        """:attr:`inference_params` replicated on every device of ``mesh``, made once per mesh and kept."""
        cache = self.__dict__.setdefault("_params_on", {})
        if mesh not in cache:
            cache[mesh] = sharding.replicate(self.inference_params, mesh)
        return cache[mesh]

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = IMAGE_BATCH, mesh: Mesh | None = None) -> np.ndarray:
        """Pixels ``[N, 3, H, W]`` → unit-norm embeddings ``[N, E]`` float32, in bucketed batches.

        With ``mesh``, the batches are dealt out over its ``"data"`` axis, one per device and call, the
        params replicated (see :meth:`_encode_on_mesh`): the embeddings equal the single-device ones bit for
        bit. In a multi-process job each process passes its own pixels (the same ``N`` everywhere) and gets
        their embeddings.
        """
        x = np.asarray(pixels, np.float32)
        if mesh is None or not len(x):
            params = self.inference_params
            fn = lambda v: self.family.image_jit(params, v, config=self.config)  # noqa: E731
            return map_bucketed(fn, x, batch_size).astype(np.float32)
        params = self.params_on(mesh)
        fn = lambda v: self.family.image_sharded(params, v, config=self.config, mesh=mesh)  # noqa: E731
        batches = [
            (np.arange(s.start, s.stop), x[s], bucket(s.stop - s.start, batch_size)) for s in chunks(len(x), batch_size)
        ]
        return self._encode_on_mesh(fn, batches, len(x), mesh)

    def encode_ids(self, token_ids: np.ndarray, batch_size: int = TEXT_BATCH, mesh: Mesh | None = None) -> np.ndarray:
        """Token ids ``[N, T]`` → unit-norm embeddings ``[N, E]`` float32, in bucketed batches.

        Attention is causal, so nothing after a text's end-of-text token can change its embedding: each
        batch is cut after its longest text (the length rounded up by :func:`text_length_bucket`, to
        bound recompilation), and when there is more than one batch the texts are batched in order of
        length, so that short texts are not padded to the length of long ones. The output is in input order.

        With ``mesh``, the same batches are dealt out over its ``"data"`` axis (see :meth:`_encode_on_mesh`);
        consecutive batches of one shape go to the devices together: the embeddings equal the single-device
        ones bit for bit. In a multi-process job each process passes its own texts (the same ``N``
        everywhere); the processes' batches then go out together and are cut to the longest of them (the
        same embeddings up to float rounding), and each process gets its texts' embeddings.
        """
        ids = np.asarray(token_ids, np.int32)
        params = self.inference_params
        fn = lambda x: self.family.text_jit(params, x, config=self.config)  # noqa: E731
        if not ids.size:
            return map_bucketed(fn, ids, batch_size).astype(np.float32)
        if self.family.causal_text:
            ends = np.asarray(clip.eos_positions(ids, self.config)) + 1
        else:  # a bidirectional tower pooled at the last position: every text keeps its whole length
            ends = np.full(len(ids), ids.shape[1])
        order = np.argsort(ends, kind="stable") if len(ids) > batch_size else np.arange(len(ids))
        batches = []
        for s in chunks(len(ids), batch_size):
            rows = order[s]
            length = min(ids.shape[1], text_length_bucket(int(ends[rows].max())))
            batches.append((rows, ids[rows, :length], bucket(len(rows), batch_size)))
        if mesh is not None:
            params = self.params_on(mesh)
            fn = lambda v: self.family.text_sharded(params, v, config=self.config, mesh=mesh)  # noqa: E731
            if sharding.spans_processes(mesh):  # the processes' batches go out together: agree on a length
                batches = _agree_lengths(batches, ids, sharding.local_blocks(mesh))
            return self._encode_on_mesh(fn, batches, len(ids), mesh)
        out = np.zeros((len(ids), self.embed_dim), np.float32)
        for rows, x, b in batches:
            out[rows] = np.asarray(fn(pad_rows(x, b)))[: len(rows)]
        return out

    def _encode_on_mesh(self, fn, batches, n: int, mesh: Mesh) -> np.ndarray:
        """Run the sharded encoder ``fn`` over ``batches`` (``(rows [b], inputs [b, ...], bucket)``, in
        order) and scatter the embeddings to ``[n, E]``.

        Each call takes up to ``L`` consecutive batches of one padded shape (``L``: this process's devices
        on the axis), one per device, and all-zero batches on the devices left over: every device runs the
        single-device program on the single-device batch shape, so each embedding is computed exactly as
        without a mesh (a smaller per-device batch changes them in the last bit: up to 1.3e-7 on the fixture
        model). With fewer batches than devices the other devices encode padding.
        """
        out = np.zeros((n, self.embed_dim), np.float32)
        per_call = sharding.local_blocks(mesh)
        group: list = []

        def flush():
            b, shape = group[0][2], group[0][1].shape[1:]
            x = np.zeros((per_call * b, *shape), group[0][1].dtype)
            for j, (_, v, _) in enumerate(group):
                x[j * b : j * b + len(v)] = v
            got = sharding.local_rows(fn(sharding.shard_rows(x, mesh, rows=len(x)).arrays))
            for j, (rows, _, _) in enumerate(group):
                out[rows] = got[j * b : j * b + len(rows)]
            group.clear()

        for batch in batches:
            if group and (
                len(group) == per_call or (batch[2], batch[1].shape[1:]) != (group[0][2], group[0][1].shape[1:])
            ):
                flush()
            group.append(batch)
        flush()
        return out

    def encode_images(
        self, images: Sequence[ImageLike] | np.ndarray, batch_size: int = IMAGE_BATCH, mesh: Mesh | None = None
    ) -> np.ndarray:
        """Images (paths, bytes, PIL images, arrays) or a pixel array ``[N, 3, H, W]`` → ``[N, E]``
        (``mesh``: as for :meth:`encode_pixels`).

        Decoding is done a batch at a time, so memory stays bounded for long lists.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return self.encode_pixels(images, batch_size, mesh)
        out = [
            self.encode_pixels(self.processing(list(images[i : i + batch_size])), batch_size, mesh)
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

    def encode_texts(self, texts: Sequence[str], batch_size: int = TEXT_BATCH, mesh: Mesh | None = None) -> np.ndarray:
        """Texts → unit-norm embeddings ``[N, E]`` float32 (``mesh``: as for :meth:`encode_ids`)."""
        return self.encode_ids(self.tokenize(texts), batch_size, mesh)

    def similarity(self, images: Sequence[ImageLike], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity ``[N_images, N_texts]`` between images and texts."""
        return self.encode_images(images) @ self.encode_texts(texts).T

    def __repr__(self) -> str:
        c = self.config
        family = "" if self.family is CLIP else f"{self.family.name}, "
        return (
            f"Model({self.name!r}, {family}vision {c.vision.num_layers}×{c.vision.hidden_size} "
            f"patch {c.vision.patch_size} @ {c.vision.image_size}px, text {c.text.num_layers}×"
            f"{c.text.hidden_size}, embed {self.embed_dim}, {clip.num_params(self.params):,} params, "
            f"fingerprint {self.fingerprint})"
        )
