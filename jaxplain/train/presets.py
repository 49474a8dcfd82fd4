"""Model sizes for training CLIP on 28×28 images with a reduced BPE vocabulary."""

from __future__ import annotations

from jaxplain.models.config import ClipConfig, TextConfig, VisionConfig

# name → (width, vision layers, text layers, heads, patch size); both towers share the width, and
# the MLPs are 4× wide, as in CLIP.
PRESETS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (32, 1, 1, 2, 7),
    "small": (128, 4, 2, 4, 7),
    "base": (192, 6, 3, 6, 7),
}


def model_config(preset: str, vocab_size: int, image_size: int = 28, max_positions: int = 32) -> ClipConfig:
    """The :class:`ClipConfig` of a preset for a vocabulary of ``vocab_size`` tokens.

    The reduced vocabularies of :func:`jaxplain.data.tokenize.write_reduced_bpe` end with
    ``<|startoftext|>``, ``<|endoftext|>``; padding is the end-of-text token, as in CLIP's tokenizer.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    width, vision_layers, text_layers, heads, patch = PRESETS[preset]
    eos = vocab_size - 1
    text = TextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_layers=text_layers,
        num_heads=heads,
        max_positions=max_positions,
        eos_token_id=eos,
        bos_token_id=vocab_size - 2,
        pad_token_id=eos,
    )
    vision = VisionConfig(
        image_size=image_size,
        patch_size=patch,
        hidden_size=width,
        intermediate_size=4 * width,
        num_layers=vision_layers,
        num_heads=heads,
    )
    return ClipConfig(text=text, vision=vision, projection_dim=width)
