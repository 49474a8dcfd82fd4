"""The ``jaxplain train`` sub-command: train a small CLIP on Fashion-MNIST and save it in the Hugging Face format.

``register(subparsers)`` adds it to the ``jaxplain`` command line; ``python -m jaxplain.train train ...``
runs the same thing without it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from jaxplain.commands.common import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from jaxplain.train.loop import TrainConfig

_DEFAULTS = TrainConfig()
ARCHS = ("clip", "siglip")
CONTEXT = {"clip": 32, "siglip": 16}


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``train`` to an argparse sub-parsers object; ``args.func(args)`` runs it and returns the exit code."""
    p = subparsers.add_parser(
        "train",
        help="train a small CLIP or SigLIP on Fashion-MNIST",
        description=(
            "Train a CLIP- or SigLIP-architecture model on Fashion-MNIST images paired with generated captions, "
            "then write it to OUT as a Hugging Face checkpoint (CLIPModel or SiglipModel, loadable by "
            "jaxplain.load and by transformers). CLIP learns with the contrastive loss and a reduced CLIP BPE "
            "vocabulary; SigLIP with the sigmoid loss (learned temperature and bias; the captions of an image's "
            "class are its positives) and a SentencePiece vocabulary trained on the captions. Checkpoints are "
            "written along the way; --resume continues from the newest one exactly. If DATA also holds the test "
            "split, the zero-shot accuracy on it is reported and recorded in OUT/TRAINING.md."
        ),
    )
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default="clip",
        help="architecture and loss: clip (softmax decision) or siglip (sigmoid decision) (default clip)",
    )
    p.add_argument("--data", required=True, help="directory of the Fashion-MNIST IDX files (gzipped or not)")
    p.add_argument("--out", required=True, help="directory to write the trained model to")
    p.add_argument("--checkpoint-dir", help="where to write training checkpoints (default OUT/checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, if any")
    p.add_argument("--preset", default="small", help="model size: tiny, small or base (default small)")
    p.add_argument(
        "--merges", type=positive_int, default=8000, help="clip: CLIP BPE merges kept in the vocabulary (default 8000)"
    )
    p.add_argument(
        "--vocab", type=positive_int, default=512, help="siglip: SentencePiece vocabulary size (default 512)"
    )
    p.add_argument(
        "--context",
        type=positive_int,
        help=f"text context length of the model (default {CONTEXT['clip']} for clip, {CONTEXT['siglip']} for siglip)",
    )
    p.add_argument("--steps", type=positive_int, default=_DEFAULTS.steps)
    p.add_argument("--batch-size", type=positive_int, default=_DEFAULTS.batch_size)
    p.add_argument("--lr", type=positive_float, default=_DEFAULTS.learning_rate, help="peak learning rate")
    p.add_argument("--warmup", type=non_negative_int, default=_DEFAULTS.warmup_steps, help="warm-up steps")
    p.add_argument("--weight-decay", type=non_negative_float, default=_DEFAULTS.weight_decay)
    p.add_argument(
        "--max-shift", type=non_negative_int, default=_DEFAULTS.max_shift, help="random translation in pixels"
    )
    p.add_argument("--flip", type=probability, default=_DEFAULTS.flip, help="probability of a horizontal flip")
    p.add_argument("--seed", type=non_negative_int, default=_DEFAULTS.seed)
    p.add_argument("--checkpoint-every", type=positive_int, default=200, help="steps between checkpoints (default 200)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        warmup_steps=args.warmup,
        weight_decay=args.weight_decay,
        seed=args.seed,
        max_shift=args.max_shift,
        flip=args.flip,
    )


def _command_line(args: argparse.Namespace) -> str:
    """The command with every setting spelled out, to record how a model was made."""
    opts = ["--data", args.data, "--out", args.out, "--arch", args.arch, "--preset", args.preset]
    opts += ["--merges", args.merges] if args.arch == "clip" else ["--vocab", args.vocab]
    opts += ["--context", args.context, "--steps", args.steps, "--batch-size", args.batch_size, "--lr", args.lr]
    opts += ["--warmup", args.warmup, "--weight-decay", args.weight_decay, "--max-shift", args.max_shift]
    opts += ["--flip", args.flip, "--seed", args.seed]
    return "jaxplain train " + shlex.join(map(str, opts))


def run(args: argparse.Namespace) -> int:
    """Train, save, evaluate; returns the exit code."""
    import jax

    import jaxplain
    from jaxplain.data import fashion_mnist
    from jaxplain.data.tokenize import Tokenizer, write_reduced_bpe
    from jaxplain.errors import InputError
    from jaxplain.models.loading import save_checkpoint
    from jaxplain.train.evaluate import zero_shot_accuracy
    from jaxplain.train.loop import resume, train
    from jaxplain.train.pipeline import BatchSource
    from jaxplain.train.presets import model_config

    try:
        config = _train_config(args)
    except ValueError as e:
        raise InputError(str(e)) from None
    if args.checkpoint_every < 1:
        raise InputError(f"--checkpoint-every must be at least 1, got {args.checkpoint_every}")
    out = Path(args.out)
    checkpoints = Path(args.checkpoint_dir) if args.checkpoint_dir else out / "checkpoints"
    if args.context is None:
        args.context = CONTEXT[args.arch]
    images, labels = fashion_mnist.load_split(args.data, "train")
    with tempfile.TemporaryDirectory() as tok_dir:
        if args.arch == "clip":
            processing = fashion_mnist.processing()
            vocab_size = write_reduced_bpe(tok_dir, args.merges)
            tokenizer = Tokenizer.from_directory(tok_dir, args.context)
            model = model_config(args.preset, vocab_size, max_positions=args.context)
            table_processing = processing
        else:
            from jaxplain.data.siglip_inputs import SiglipImageProcessing, SiglipTokenizer
            from jaxplain.train.presets import siglip_model_config
            from jaxplain.train.spiece import write_caption_spiece

            processing = SiglipImageProcessing.for_image_size(fashion_mnist.IMAGE_SIZE)
            vocab_size = write_caption_spiece(tok_dir, args.vocab, args.context)
            tokenizer = SiglipTokenizer.from_directory(tok_dir, args.context)
            model = siglip_model_config(
                args.preset, vocab_size, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, max_positions=args.context
            )
            table_processing = processing.image_processing
        source = BatchSource.build(
            images,
            labels,
            tokenizer,
            table_processing,
            batch_size=config.batch_size,
            seed=config.seed,
            max_shift=config.max_shift,
            flip=config.flip,
            cut_captions=args.arch == "clip",
        )
        state = resume(model, config, checkpoints) if args.resume else None
        start = 0 if state is None else state.step
        print(
            f"jaxplain train: {args.arch}, {len(images)} images, {jax.device_count()} device(s), {config.steps} "
            f"steps of {config.batch_size}" + (f", resuming at step {start}" if start else ""),
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        state, history = train(
            model,
            config,
            source,
            state=state,
            checkpoint_dir=checkpoints,
            checkpoint_every=args.checkpoint_every,
            progress=not args.no_progress,
        )
        seconds = time.perf_counter() - t0
        if args.arch == "clip":
            save_checkpoint(out, model, state.params, tok_dir, processing)
        else:
            _save_siglip(out, model, state.params, tok_dir, processing)
    report = {
        "arch": {
            "clip": "CLIP (contrastive loss, softmax decision)",
            "siglip": "SigLIP (sigmoid loss, sigmoid decision)",
        }[args.arch],
        "command": _command_line(args),
        "seconds": seconds,
        "steps": f"{start} → {state.step}",
        "throughput": (state.step - start) * config.batch_size / max(seconds, 1e-9),
        "final_loss": float(history["loss"][-10:].mean()) if len(history.get("loss", ())) else float("nan"),
        "devices": f"{jax.device_count()} × {jax.devices()[0].platform}",
    }
    if fashion_mnist.has_split(args.data, "test"):
        test_images, test_labels = fashion_mnist.load_split(args.data, "test")
        trained = jaxplain.load(out)
        report["accuracy"] = zero_shot_accuracy(trained, test_images, test_labels, fashion_mnist.CLASS_NAMES)
        report["test_images"] = len(test_images)
    (out / "TRAINING.md").write_text(_training_md(report))
    print(
        f"jaxplain train: wrote {out} ({seconds / 60:.1f} min"
        + (f", zero-shot test accuracy {report['accuracy']:.2%})" if "accuracy" in report else ")"),
        file=sys.stderr,
    )
    return 0


def _save_siglip(out: Path, model, params, tok_dir: str, processing) -> None:
    """Write a trained SigLIP as a transformers ``SiglipModel`` directory: weights and config, the
    SentencePiece tokenizer files, ``preprocessor_config.json``."""
    import json
    import shutil

    from jaxplain.models.siglip_convert import write_checkpoint

    write_checkpoint(out, params, model)
    for f in Path(tok_dir).iterdir():
        shutil.copyfile(f, out / f.name)
    (out / "preprocessor_config.json").write_text(json.dumps(processing.to_hf_dict(), indent=2) + "\n")


def _training_md(r: dict) -> str:
    lines = [
        "# How this model was trained",
        "",
        "Written by `jaxplain train` at the end of the run that produced these weights.",
        "",
        "```",
        r["command"],
        "```",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {r['arch']} |",
        f"| steps | {r['steps']} |",
        f"| training wall-clock time | {r['seconds'] / 60:.1f} min ({r['seconds']:.0f} s) |",
        f"| throughput | {r['throughput']:.0f} images/s on {r['devices']} |",
        f"| loss (mean of the last 10 steps) | {r['final_loss']:.4f} |",
    ]
    if "accuracy" in r:
        lines.append(
            f"| zero-shot accuracy, {r['test_images']:,} test images (class names × `jaxplain.DEFAULT_TEMPLATES`) | "
            f"{r['accuracy']:.2%} |"
        )
    lines += [
        "",
        "Data: Fashion-MNIST (Zalando SE, MIT licence), the 60,000 training images; captions from",
        "`jaxplain.data.captions.CaptionSpace` (templates × synonyms × optional adjectives).",
        "",
    ]
    return "\n".join(lines)
