"""Inputs: image decoding and preprocessing, tokenisation."""

from jaxplain.data.images import ImageProcessing, list_images, load_rgb
from jaxplain.data.tokenize import Tokenizer, write_reduced_bpe

__all__ = ["ImageProcessing", "Tokenizer", "list_images", "load_rgb", "write_reduced_bpe"]
