"""``load`` and ``save``: Hugging Face CLIP checkpoint directories ↔ :class:`Model` bundles.

Weights are read only from safetensors files; pickled checkpoints (``pytorch_model.bin``) are
refused, never unpickled.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.data.images import ImageProcessing, read_processing
from jaxplain.data.tokenize import TOKENIZER_FILES, Tokenizer, bundled_bpe_dir
from jaxplain.errors import CheckpointError, ModelNotFoundError
from jaxplain.models import clip
from jaxplain.models.bundle import Model, fingerprint
from jaxplain.models.config import ClipConfig, read_config
from jaxplain.models.convert import params_from_state_dict, state_dict_from_params

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
HUB_FILES = [
    "config.json",
    "*.safetensors",
    WEIGHTS_INDEX,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "preprocessor_config.json",
]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    try:
        with safe_open(str(path), framework="np") as f:
            for key in f.keys():
                try:
                    out[key] = f.get_tensor(key)
                except TypeError:  # bfloat16 has no NumPy dtype: read it through jax
                    with safe_open(str(path), framework="flax") as g:
                        out[key] = np.asarray(g.get_tensor(key).astype(jnp.float32))
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read it as safetensors ({e})") from None
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{path}: cannot read it as safetensors ({e})") from None
    check_finite(out, str(path))
    return out


def _count(n: int, what: str) -> str:
    return f"{n} {what} value" + ("" if n == 1 else "s")


def check_finite(state: dict[str, np.ndarray], source: str, show: int = 5) -> None:
    """Refuse weights a model cannot compute with: a :class:`CheckpointError` naming ``source`` and each
    floating-point tensor that holds NaN or infinite values (how many of each; the first ``show`` tensors
    in key order, then how many more), or a ``logit_scale`` whose exponential, the temperature, overflows.

    One pass of ``np.isfinite`` over the host arrays, tensor by tensor, when the checkpoint is read.
    """
    bad = []
    for key in sorted(state):
        x = np.asarray(state[key])
        if not np.issubdtype(x.dtype, np.floating) or np.isfinite(x).all():
            continue
        nan = int(np.isnan(x).sum())
        inf = int(x.size - nan - np.isfinite(x).sum())
        parts = [_count(nan, "NaN")] * bool(nan) + [_count(inf, "infinite")] * bool(inf)
        bad.append(f"{key!r} holds {' and '.join(parts)}")
    if bad:
        more = f"; and {len(bad) - show} more tensors" if len(bad) > show else ""
        raise CheckpointError(f"{source}: {'; '.join(bad[:show])}{more} (a model with them gives NaN scores)")
    scale = state.get("logit_scale")
    if scale is not None and np.asarray(scale).size == 1:
        with np.errstate(over="ignore"):
            temperature = np.exp(np.asarray(scale, np.float32))
        if not np.isfinite(temperature).all():
            raise CheckpointError(
                f"{source}: 'logit_scale' is {float(np.asarray(scale).reshape(-1)[0])}, so the temperature "
                "exp(logit_scale) overflows to inf (a model with it gives NaN scores)"
            )


def read_weights(directory: Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory (single or sharded safetensors)."""
    index = directory / WEIGHTS_INDEX
    if (directory / WEIGHTS).is_file():
        return _read_safetensors(directory / WEIGHTS)
    if index.is_file():
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{index}: cannot read it as JSON ({e})") from None
        weight_map = meta.get("weight_map") if isinstance(meta, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: 'weight_map' must be a JSON object of tensor name to file name")
        shards = sorted(set(weight_map.values()))
        state: dict[str, np.ndarray] = {}
        for shard in shards:
            state.update(_read_safetensors(directory / shard))
        return state
    pickled = [n for n in ("pytorch_model.bin", "flax_model.msgpack", "tf_model.h5") if (directory / n).exists()]
    hint = (
        f" It has {', '.join(pickled)}, which jaxplain does not read (pickled or framework-specific files are never"
        " unpickled). Convert it once where you trust the file: CLIPModel.from_pretrained(d).save_pretrained(d)"
        " writes model.safetensors."
        if pickled
        else ""
    )
    raise CheckpointError(f"{directory}: no {WEIGHTS} (or sharded {WEIGHTS_INDEX}).{hint}")


def _load_tokenizer(directory: Path, config: ClipConfig) -> Tokenizer:
    if any((directory / f).is_file() for f in TOKENIZER_FILES):
        tok = Tokenizer.from_directory(directory, config.text.max_positions)
    elif config.text.vocab_size == 49408:
        tok = Tokenizer.from_directory(bundled_bpe_dir(), config.text.max_positions)
    else:
        raise CheckpointError(
            f"{directory}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt) and the vocabulary "
            f"({config.text.vocab_size} tokens) is not CLIP's standard one"
        )
    if tok.vocab_size > config.text.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {tok.vocab_size} tokens but the model's embedding table "
            f"has {config.text.vocab_size} rows"
        )
    return tok


def _hub_download(repo_id: str) -> Path:
    """Fetch a checkpoint from the Hugging Face Hub (or its local cache) and return its directory."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - transformers depends on it
        raise ModelNotFoundError(_not_found(repo_id, "huggingface_hub is not installed")) from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelNotFoundError(_not_found(repo_id, reason)) from None


def _not_found(name: str, reason: str) -> str:
    local = name.split("/")[-1]
    return (
        f"model {name!r} is not a local directory and could not be fetched from the Hugging Face Hub "
        f"({reason}).\n"
        f"On a machine with network access, download it:\n"
        f"    hf download {name} --local-dir {local}\n"
        f"then copy the folder {local}/ here and pass its path (e.g. --model ./{local}). "
        f"jaxplain needs config.json, model.safetensors, the tokenizer files and preprocessor_config.json."
    )


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The checkpoint directory for a name: a local directory, a model jaxplain ships, or a hub id."""
    from jaxplain.assets import shipped_models

    s = str(name_or_path)
    path = Path(s).expanduser()
    if path.is_dir():
        return path
    if s in shipped_models():
        return shipped_models()[s]
    if path.exists():
        raise CheckpointError(f"{s}: is a file; pass the checkpoint directory that holds config.json")
    if _HUB_ID.match(s):
        return _hub_download(s)
    shipped = ", ".join(sorted(shipped_models())) or "none"
    raise ModelNotFoundError(
        f"model {s!r}: no such directory, and not a hub id of the form 'org/name' (models shipped with jaxplain: "
        f"{shipped})"
    )


def load(name_or_path: str | os.PathLike, *, dtype: str = "float32") -> Model:
    """Load a CLIP checkpoint as a :class:`Model`.

    Args:
      name_or_path: a local Hugging Face CLIP directory (``config.json``, ``model.safetensors``,
        tokenizer files, ``preprocessor_config.json``), the name of a model shipped with jaxplain, or a
        hub id such as ``"openai/clip-vit-base-patch32"`` (downloaded where the network allows).
      dtype: compute dtype, ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``. Embeddings are
        returned as float32 either way; layer norms and softmax run in float32.

    Raises:
      ModelNotFoundError: the name is not found locally and cannot be downloaded; the message says
        what to download and where to put it.
      CheckpointError: the checkpoint is incomplete, malformed or unusable: a config value of the
        wrong type or out of range (the message names the file and the key), a missing, left-over or
        mis-shaped tensor, or a tensor holding NaN or infinite values (each named).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    directory = resolve(name_or_path)
    loader = _family_loader(directory)
    if loader is not None:
        return loader(directory, str(name_or_path), dtype)
    config = read_config(directory)
    state = read_weights(directory)
    host = params_from_state_dict(state, config, source=str(directory))
    tokenizer = _load_tokenizer(directory, config)
    processing = read_processing(directory, config.vision.image_size)
    fp = fingerprint(config, host, processing=processing, tokenizer=tokenizer)
    params = jax.tree.map(jnp.asarray, host)
    if dtype != "float32":
        params = clip.cast_params(params, DTYPES[dtype])
    return Model(
        name=str(name_or_path),
        config=config,
        params=params,
        tokenizer=tokenizer,
        processing=processing,
        fingerprint=fp,
        directory=directory,
    )


def _model_type(directory: Path) -> str | None:
    """The ``model_type`` of a checkpoint's ``config.json`` (None where it has none, or cannot be read:
    the CLIP reader then says what is wrong)."""
    try:
        d = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d.get("model_type") if isinstance(d, dict) else None


def _family_loader(directory: Path) -> Callable[[Path, str, str], Model] | None:
    """The loader of a checkpoint directory that is not a Hugging Face CLIP one, or None for CLIP.

    Chosen by ``config.json``'s ``model_type`` (``siglip``, ``slip``, ``blip``), or by OpenCLIP's own
    ``open_clip_config.json`` where the directory has no ``config.json``. Each loader is
    ``(directory, name, dtype) → Model`` and is imported only when its family is met.
    """
    import importlib

    kind = _model_type(directory)
    if kind is None and not (directory / "config.json").exists() and (directory / "open_clip_config.json").exists():
        kind = "open_clip"
    if kind == "siglip":
        return _load_siglip
    if kind in _LOADERS:
        module, function = _LOADERS[kind]
        return getattr(importlib.import_module(module), function)
    return None


# model_type → (module, function) of the loaders that live beside their converters
_LOADERS = {
    "open_clip": ("jaxplain.models.openclip_convert", "load_openclip"),
    "slip": ("jaxplain.models.slip_convert", "load_slip"),
    "blip": ("jaxplain.models.blip_convert", "load_blip"),
}


def _load_siglip(directory: Path, name: str, dtype: str) -> Model:
    """A transformers ``SiglipModel`` directory as a :class:`Model` of the SigLIP family: its towers
    (:mod:`jaxplain.models.siglip`), its own tokenizer and square preprocessing
    (:mod:`jaxplain.data.siglip_inputs`), and its sigmoid decision."""
    from jaxplain.data.siglip_inputs import SiglipImageProcessing, SiglipTokenizer
    from jaxplain.models.family import SIGLIP
    from jaxplain.models.siglip_convert import read_checkpoint

    host, config = read_checkpoint(directory)
    tokenizer = SiglipTokenizer.from_directory(directory, config.text.max_positions)
    if tokenizer.vocab_size > config.text.vocab_size:
        raise CheckpointError(
            f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding table "
            f"has {config.text.vocab_size} rows"
        )
    size = config.vision.image_size
    if (directory / "preprocessor_config.json").exists():
        processing = SiglipImageProcessing.from_directory(directory)
    else:  # SigLIP's standard preprocessing at the tower's size
        processing = SiglipImageProcessing.for_image_size(size)
    if (processing.height, processing.width) != (size, size):
        raise CheckpointError(
            f"{directory}: preprocessor_config.json resizes images to {processing.height}×{processing.width}, "
            f"but the vision tower takes {size}×{size}"
        )
    fp = fingerprint(config, host, processing=processing, tokenizer=tokenizer, family=SIGLIP)
    params = jax.tree.map(jnp.asarray, host)
    if dtype != "float32":
        params = clip.cast_params(params, DTYPES[dtype])  # the temperature stays float32; so does the bias
        params["logit_bias"] = jnp.asarray(host["logit_bias"])
    return Model(
        name=name,
        config=config,
        params=params,
        tokenizer=tokenizer,
        processing=processing,
        fingerprint=fp,
        directory=directory,
        family=SIGLIP,
    )


def save_checkpoint(
    directory: str | os.PathLike,
    config: ClipConfig,
    params: clip.Params,
    tokenizer_dir: str | os.PathLike,
    processing: ImageProcessing | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write params in the Hugging Face CLIP format, loadable by :func:`load` and by transformers.

    Writes ``config.json`` (with ``extra`` keys merged in), ``model.safetensors`` (float32),
    ``preprocessor_config.json`` and the tokenizer files of ``tokenizer_dir`` (``vocab.json`` and
    ``merges.txt``, plus the ``tokenizer.json`` and ``tokenizer_config.json`` transformers writes).
    """
    from safetensors.numpy import save_file
    from transformers import CLIPTokenizer

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    hf = {**config.to_hf_dict(), **(extra or {})}
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    state = state_dict_from_params(jax.tree.map(np.asarray, params), config)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    processing = processing or ImageProcessing.for_image_size(config.vision.image_size)
    (out / "preprocessor_config.json").write_text(json.dumps(processing.to_hf_dict(), indent=2) + "\n")
    tok_src = Path(tokenizer_dir)
    for name in ("vocab.json", "merges.txt"):
        if (tok_src / name).is_file() and tok_src.resolve() != out.resolve():
            (out / name).write_bytes((tok_src / name).read_bytes())
    hf_tok = CLIPTokenizer.from_pretrained(str(tok_src))
    hf_tok.model_max_length = config.text.max_positions
    hf_tok.save_pretrained(str(out))
    return out


def save(model: Model, directory: str | os.PathLike) -> Path:
    """Save a loaded :class:`Model` (weights as float32) in the Hugging Face CLIP format.

    Only a model that format can hold: a CLIP whose image tower has its pre-layer norm. Another family (a
    SigLIP, or a SLIP whose image tower has no pre-LN) is an :class:`~jaxplain.errors.InputError`: its own
    checkpoint directory is already the format to keep it in.
    """
    from jaxplain.errors import InputError
    from jaxplain.models.family import CLIP

    if model.family is not CLIP or not getattr(model.config.vision, "pre_norm", True):
        raise InputError(
            f"{model.name}: save writes the Hugging Face CLIP format, which cannot hold this model "
            f"({model.family.name}{'' if model.family is not CLIP else ' without a pre-layer norm'}); "
            "copy its checkpoint directory instead"
        )
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), model.params)
    src = model.directory if model.directory is not None else bundled_bpe_dir()
    return save_checkpoint(directory, model.config, params, src, model.processing)
