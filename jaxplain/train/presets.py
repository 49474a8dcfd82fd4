"""Model sizes for training CLIP (reduced BPE vocabulary) or SigLIP (a SentencePiece vocabulary of the
captions) on 28×28 images."""

from __future__ import annotations

from jaxplain.models.config import ClipConfig, TextConfig, VisionConfig
from jaxplain.models.siglip import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

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


def siglip_model_config(
    preset: str, vocab_size: int, *, eos_id: int, pad_id: int, image_size: int = 28, max_positions: int = 24
) -> SiglipConfig:
    """The :class:`~jaxplain.models.siglip.SiglipConfig` of a preset: the same widths, depths, heads and patch
    as the CLIP preset of that name, SigLIP's architecture (no class token, attention-pooling head, text
    pooled at the last of ``max_positions`` positions, tanh GELU, LayerNorm eps 1e-6), the embedding as wide
    as the towers."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    width, vision_layers, text_layers, heads, patch = PRESETS[preset]
    text = SiglipTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_layers=text_layers,
        num_heads=heads,
        max_positions=max_positions,
        projection_size=width,
        pad_token_id=pad_id,
        bos_token_id=eos_id,  # SigLIP's tokenizer adds no start token
        eos_token_id=eos_id,
    )
    vision = SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch,
        hidden_size=width,
        intermediate_size=4 * width,
        num_layers=vision_layers,
        num_heads=heads,
    )
    return SiglipConfig(text=text, vision=vision)
