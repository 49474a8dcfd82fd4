"""Training batches for Fashion-MNIST, built on the host with vectorised NumPy.

Batch ``t`` is a pure function of ``(seed, t)``: the images come from per-epoch permutations seeded
by ``(seed, epoch)``, the captions and augmentation from a generator seeded by ``(seed, t)``. So a run
resumed at step ``t`` sees exactly the batches an uninterrupted run would, with no generator state to
save.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxplain.data import fashion_mnist
from jaxplain.data.captions import CaptionSpace
from jaxplain.data.images import ImageProcessing
from jaxplain.data.tokenize import Tokenizer

_PERMUTATION, _STEP = 0, 1  # stream tags, so the two kinds of seeds never collide


@functools.lru_cache(maxsize=2)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, _PERMUTATION, epoch]).permutation(n)


def caption_table(space: CaptionSpace, tokenizer: Tokenizer, cut: bool = True) -> np.ndarray:
    """Token ids ``[R, T]`` of every caption of ``space`` (rows as :meth:`CaptionSpace.flat_index`).

    With ``cut`` (a causal text tower, CLIP's), ``T`` is the length of the longest caption, not the model's
    context: padding is the end-of-text token and pooling reads the first one, so shorter rows give the
    same embeddings and training spends no compute on padding. Without it (SigLIP's bidirectional tower,
    pooled at the last position), rows keep the full context the model sees at inference.
    """
    ids = tokenizer(space.table_texts())
    if not cut:
        return np.ascontiguousarray(ids, np.int32)
    first_eos = np.argmax(ids == tokenizer.eos_id, axis=1)
    return np.ascontiguousarray(ids[:, : first_eos.max() + 1])


def shift_and_flip(rng: np.random.Generator, images: np.ndarray, max_shift: int, flip: float) -> np.ndarray:
    """Random translations by up to ``max_shift`` pixels (zero fill) and horizontal flips with probability
    ``flip``, for uint8 images ``[N, H, W]``."""
    n, h, w = images.shape
    if max_shift:
        padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
        dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
        rows = dy[:, None, None] + np.arange(h)[None, :, None]
        cols = dx[:, None, None] + np.arange(w)[None, None, :]
        images = padded[np.arange(n)[:, None, None], rows, cols]
    if flip:
        images = np.where((rng.random(n) < flip)[:, None, None], images[:, :, ::-1], images)
    return images


@dataclasses.dataclass(frozen=True, eq=False)
class BatchSource:
    """Makes batch ``t`` of a run: ``source(t) → {"pixels" [B, 3, 28, 28], "ids" [B, T], "labels" [B]}``.

    Attributes:
      images: the training images ``[N, 28, 28]`` uint8.
      labels: their classes ``[N]`` int32.
      captions: :func:`caption_table` of ``space``.
      pixel_table: :func:`jaxplain.data.fashion_mnist.pixel_table` of the model's preprocessing.
      space: the caption space that captions are drawn from.
      batch_size, seed, max_shift, flip: as in :class:`jaxplain.train.loop.TrainConfig`.
    """

    images: np.ndarray
    labels: np.ndarray
    captions: np.ndarray
    pixel_table: np.ndarray
    space: CaptionSpace
    batch_size: int
    seed: int
    max_shift: int = 0
    flip: float = 0.0

    @classmethod
    def build(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        tokenizer: Tokenizer,
        processing: ImageProcessing,
        *,
        batch_size: int,
        seed: int,
        max_shift: int = 0,
        flip: float = 0.0,
        space: CaptionSpace | None = None,
        cut_captions: bool = True,
    ) -> BatchSource:
        """The source of a run; ``cut_captions`` as ``cut`` in :func:`caption_table`."""
        space = space or CaptionSpace()
        if batch_size > len(images):
            raise ValueError(f"batch size {batch_size} is larger than the {len(images)} training images")
        return cls(
            images=images,
            labels=np.asarray(labels, np.int32),
            captions=caption_table(space, tokenizer, cut_captions),
            pixel_table=fashion_mnist.pixel_table(processing),
            space=space,
            batch_size=batch_size,
            seed=seed,
            max_shift=max_shift,
            flip=flip,
        )

    def indices(self, step: int) -> np.ndarray:
        """Image indices ``[B]`` of batch ``step``: consecutive slices of per-epoch permutations."""
        n = len(self.images)
        pos = step * self.batch_size + np.arange(self.batch_size)
        epoch, offset = pos // n, pos % n
        out = np.empty(self.batch_size, np.int64)
        for e in np.unique(epoch):  # at most two epochs meet in one batch
            sel = epoch == e
            out[sel] = _permutation(self.seed, int(e), n)[offset[sel]]
        return out

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, _STEP, step])
        idx = self.indices(step)
        labels = self.labels[idx]
        images = shift_and_flip(rng, self.images[idx], self.max_shift, self.flip)
        rows = self.space.flat_index(labels, self.space.draw(rng, labels))
        return {
            "pixels": fashion_mnist.to_pixels(images, self.pixel_table),
            "ids": self.captions[rows],
            "labels": labels,
        }
