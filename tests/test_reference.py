"""Live parity with transformers' PyTorch ``CLIPModel`` on random-weight checkpoints of real sizes.

Each case builds a ``CLIPModel`` with the widths of a published checkpoint (fewer layers, to stay
fast), saves it in the Hugging Face format, loads it with ``jaxplain.load`` and compares image
embeddings, text embeddings and logits (max abs difference ≤ 1e-4 in float32). Skipped where torch
is not installed; CI installs it.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer  # noqa: E402

import jaxplain  # noqa: E402
from jaxplain.data.tokenize import bundled_bpe_dir, write_reduced_bpe  # noqa: E402

pytestmark = pytest.mark.reference
TOL = 1e-4

# (text width, heads, mlp), (vision width, heads, mlp, image size, patch), projection, activation,
# layers per tower, full 49,408-token vocabulary?
CASES = {
    "vit-b-32-widths": ((512, 8, 2048), (768, 12, 3072, 224, 32), 512, "quick_gelu", 2, True),
    "vit-b-16": ((512, 8, 2048), (768, 12, 3072, 224, 16), 512, "quick_gelu", 1, False),
    "vit-l-14": ((768, 12, 3072), (1024, 16, 4096, 224, 14), 768, "quick_gelu", 1, False),
    "vit-l-14-336": ((768, 12, 3072), (1024, 16, 4096, 336, 14), 768, "quick_gelu", 1, False),
    "laion-vit-h-14-gelu": ((1024, 16, 4096), (1280, 16, 5120, 224, 14), 1024, "gelu", 1, False),
}
TEXTS = ["a photo of a cat", "a diagram of two towers", "A PULLOVER, knitted.", "sandal"]


def build(tmp_path, case):
    (td, th, tf), (vd, vh, vf, size, patch), proj, act, layers, full_vocab = CASES[case]
    out = tmp_path / case
    if full_vocab:
        src = bundled_bpe_dir()
        vocab = 49408
    else:
        src = out
        vocab = write_reduced_bpe(out, 2000)
    tok = CLIPTokenizer.from_pretrained(str(src))
    tok.save_pretrained(str(out))
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=vocab,
            hidden_size=td,
            num_attention_heads=th,
            intermediate_size=tf,
            num_hidden_layers=layers,
            hidden_act=act,
            eos_token_id=vocab - 1,
            bos_token_id=vocab - 2,
            pad_token_id=vocab - 1,
        ),
        vision_config=dict(
            hidden_size=vd,
            num_attention_heads=vh,
            intermediate_size=vf,
            num_hidden_layers=layers,
            image_size=size,
            patch_size=patch,
            hidden_act=act,
        ),
        projection_dim=proj,
    )
    torch.manual_seed(0)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(str(out))
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor.save_pretrained(str(out))
    return out, model, tok, processor


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_clipmodel(tmp_path, case):
    out, ref, tok, processor = build(tmp_path, case)
    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(300, 240), (200, 410)]]

    pixels = processor(images=images, return_tensors="np")["pixel_values"]
    ids = tok(TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))

    model = jaxplain.load(out)
    got_pixels = model.preprocess(images)
    np.testing.assert_allclose(got_pixels, pixels, atol=TOL, rtol=0)
    np.testing.assert_array_equal(model.tokenize(TEXTS), ids)
    u = model.encode_images(images)
    v = model.encode_texts(TEXTS)
    np.testing.assert_allclose(u, want.image_embeds.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(v, want.text_embeds.numpy(), atol=TOL, rtol=0)
    logits = np.asarray(jaxplain.models.logits(model.params, u, v))
    np.testing.assert_allclose(logits, want.logits_per_image.numpy(), atol=TOL, rtol=0)


def test_legacy_argmax_pooling(tmp_path):
    """Configs with eos_token_id == 2 (as the OpenAI checkpoints on the hub have) pool at the highest id."""
    out, _, tok, _ = build(tmp_path, "vit-b-16")
    import json

    cfg = json.loads((out / "config.json").read_text())
    cfg["text_config"]["eos_token_id"] = 2
    (out / "config.json").write_text(json.dumps(cfg))
    ref = CLIPModel.from_pretrained(str(out)).eval()
    ids = tok(TEXTS, padding="max_length", max_length=77, return_tensors="np")["input_ids"]
    with torch.no_grad():
        want = ref.get_text_features(input_ids=torch.tensor(ids)).pooler_output
    want = want / want.norm(dim=-1, keepdim=True)
    model = jaxplain.load(out)
    assert model.config.text.pool_by_argmax
    np.testing.assert_allclose(model.encode_ids(ids), want.numpy(), atol=TOL, rtol=0)
