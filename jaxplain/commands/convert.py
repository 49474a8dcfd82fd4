"""``jaxplain convert``: turn a checkpoint of another format into a directory ``jaxplain.load`` reads.

``jaxplain convert slip IN.pt OUT_DIR``: a SLIP ``.pt`` file (facebookresearch/SLIP) → ``config.json``,
``model.safetensors``, CLIP's BPE tokenizer and SLIP's preprocessing (:func:`jaxplain.models.slip_convert.
convert_slip`).
"""

from __future__ import annotations

import argparse
import sys

from jaxplain.commands.common import EXIT_OK, output, positive_int


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``convert`` and its families to the ``jaxplain`` parser."""
    p = subparsers.add_parser(
        "convert",
        help="convert a checkpoint of another format (SLIP .pt) into a directory jaxplain loads",
        description=(
            "Convert a checkpoint of another format, once, into a checkpoint directory that jaxplain loads "
            "(config.json, model.safetensors, tokenizer files, preprocessor_config.json), e.g. for --model."
        ),
    )
    families = p.add_subparsers(dest="family", required=True, metavar="FAMILY")
    slip = families.add_parser(
        "slip",
        help="a SLIP or SLIP-trained CLIP .pt checkpoint (facebookresearch/SLIP)",
        description=(
            "Convert a SLIP checkpoint (a .pt file of facebookresearch/SLIP: SLIP_VITS16, SLIP_VITB16, SLIP_VITL16, "
            "or the CLIP_* models trained with it) into OUT_DIR, which `jaxplain ... --model OUT_DIR` and "
            "jaxplain.load then read without torch. Reading the .pt file needs torch (pip install torch==2.13.0, "
            "the CPU wheel). The file is loaded with torch.load(weights_only=True), allowing only "
            "argparse.Namespace (SLIP's saved arguments) beyond tensors: a file that needs anything else is refused, "
            "naming it, and nothing of it is run. The SimCLR head (image_mlp) is dropped; the widths and depths "
            "are read from the tensors, the attention heads from the saved args.model or the width. OUT_DIR gets "
            "config.json, model.safetensors, CLIP's BPE vocabulary (SLIP's tokenizer, 77 tokens) and SLIP's "
            "evaluation preprocessing (shorter side resized bilinearly to 224, centre crop, ImageNet mean and std). "
            "OUT_DIR must be new, empty, or an earlier conversion's. "
            "Exit status 0: converted; 2: nothing usable was written (a bad, refused or unreadable file, no torch, "
            "an output that cannot be written; the message says which)."
        ),
    )
    slip.add_argument("input", metavar="IN.pt", help="the SLIP checkpoint file")
    slip.add_argument("out_dir", metavar="OUT_DIR", help="the directory to write the converted checkpoint to")
    slip.add_argument(
        "--vision-heads",
        type=positive_int,
        default=None,
        help="attention heads of the image tower, for a checkpoint whose saved args do not name a SLIP model "
        "and whose width is not one of SLIP's ViTs (384, 768, 1024)",
    )
    slip.set_defaults(func=run_slip)
    return p


def run_slip(args: argparse.Namespace) -> int:
    """``jaxplain convert slip``: convert, then say where the model is and what it is."""
    from jaxplain.models.slip_convert import convert_slip, read_config_summary

    with output(args.out_dir, kind="directory", what="OUT_DIR") as out:
        convert_slip(args.input, out, vision_heads=args.vision_heads)
    print(f"jaxplain: converted {args.input} to {out} ({read_config_summary(out)})", file=sys.stderr)
    return EXIT_OK
