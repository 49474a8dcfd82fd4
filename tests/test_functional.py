"""The towers are pure functions: they jit, vmap and differentiate, and compile once per bucket."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxplain.models import clip
from jaxplain.models.bundle import encode_image_jit, encode_text_jit
from jaxplain.train.loss import contrastive_loss
from tests.conftest import dot_precisions


@pytest.fixture(scope="module")
def inputs(tiny_model, reference):
    return jnp.asarray(reference["pixels"][:4]), jnp.asarray(reference["input_ids"][:4])


def pair_similarity(params, pixels, ids, config):
    """Cosine similarity of one image [3, H, W] and one text [T], through both towers."""
    u = clip.encode_image(params, pixels[None], config)[0]
    v = clip.encode_text(params, ids[None], config)[0]
    return u @ v


def test_jit_vmap_grad_matches_finite_differences(tiny_model, inputs):
    cfg, params = tiny_model.config, tiny_model.params
    pixels, ids = inputs
    grad_fn = jax.jit(jax.vmap(jax.grad(pair_similarity, argnums=1), in_axes=(None, 0, 0, None)), static_argnums=3)
    g = np.asarray(grad_fn(params, pixels, ids, cfg))
    assert g.shape == pixels.shape

    # central differences in float64 on a few pixel coordinates of every pair
    params64 = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    f = jax.jit(lambda p, x, t: pair_similarity(p, x, t, cfg))
    eps = 1e-4
    rng = np.random.RandomState(0)
    with jax.enable_x64(True):
        p64 = jax.tree.map(jnp.asarray, params64)
        for n in range(pixels.shape[0]):
            x = np.asarray(pixels[n], np.float64)
            for _ in range(3):
                c, i, j = rng.randint(3), rng.randint(32), rng.randint(32)
                d = np.zeros_like(x)
                d[c, i, j] = eps
                fd = (f(p64, x + d, ids[n]) - f(p64, x - d, ids[n])) / (2 * eps)
                np.testing.assert_allclose(g[n, c, i, j], fd, rtol=2e-3, atol=1e-6)


def test_grad_with_respect_to_token_embeddings(tiny_model, inputs):
    cfg, params = tiny_model.config, tiny_model.params
    _, ids = inputs
    emb = clip.embed_tokens(params, ids)
    # passing the looked-up embeddings gives the same result as passing ids
    a = clip.text_forward(params, ids, cfg)[0]
    b = clip.text_forward(params, ids, cfg, token_embeds=emb)[0]
    np.testing.assert_allclose(a, b, atol=1e-6)

    def norm_of_projection(e):
        return clip.text_forward(params, ids, cfg, token_embeds=e)[1]["projected"].sum()

    g = jax.grad(norm_of_projection)(emb)
    eos = np.asarray(clip.eos_positions(ids, cfg))
    # causal attention: tokens after the end-of-text token cannot influence the pooled output
    for n in range(ids.shape[0]):
        assert np.abs(np.asarray(g[n, eos[n] + 1 :])).max() == 0.0
        assert np.abs(np.asarray(g[n, : eos[n] + 1])).max() > 0.0


def test_intermediates(tiny_model, inputs):
    cfg, params = tiny_model.config, tiny_model.params
    pixels, ids = inputs
    emb, aux = clip.image_forward(params, pixels, cfg, collect=True)
    L, H, T = cfg.vision.num_layers, cfg.vision.num_heads, cfg.vision.num_positions
    assert aux["tokens"].shape == (4, L + 1, T, cfg.vision.hidden_size)
    assert aux["attention"].shape == (4, L, H, T, T)
    np.testing.assert_allclose(aux["attention"].sum(-1), 1.0, atol=1e-5)
    # the pooled output is the post-layer-norm of the last layer's class token
    from jaxplain.models.transformer import layer_norm

    pooled = layer_norm(aux["tokens"][:, -1, 0], params["vision"]["post_ln"], cfg.vision.layer_norm_eps)
    np.testing.assert_allclose(pooled, aux["pooled"], atol=1e-6)
    np.testing.assert_allclose(emb, clip.encode_image(params, pixels, cfg), atol=1e-6)

    _, taux = clip.text_forward(params, ids, cfg, collect=True)
    att = np.asarray(taux["attention"])
    assert att.shape == (4, cfg.text.num_layers, cfg.text.num_heads, 77, 77)
    assert np.abs(np.triu(att, k=1)).max() == 0.0  # causal: nothing attends to later tokens


def test_vmap_over_single_examples_equals_the_batch(tiny_model, inputs):
    cfg, params = tiny_model.config, tiny_model.params
    pixels, ids = inputs
    one = jax.vmap(lambda x: clip.encode_image(params, x[None], cfg)[0])(pixels)
    np.testing.assert_allclose(one, clip.encode_image(params, pixels, cfg), atol=1e-6)
    one_t = jax.vmap(lambda t: clip.encode_text(params, t[None], cfg)[0])(ids)
    np.testing.assert_allclose(one_t, clip.encode_text(params, ids, cfg), atol=1e-6)


def test_no_recompile_within_a_bucket(tiny_model, reference):
    pixels = np.concatenate([reference["pixels"]] * 2)  # 14 images
    ids = reference["input_ids"]
    encode_image_jit.clear_cache()  # other tests compiled other buckets
    encode_text_jit.clear_cache()
    tiny_model.encode_pixels(pixels[:5])
    tiny_model.encode_ids(ids[[0, 1, 2]])
    n_img, n_txt = encode_image_jit._cache_size(), encode_text_jit._cache_size()
    a = tiny_model.encode_pixels(pixels[:7])  # 5 and 7 share the bucket of 8
    b = tiny_model.encode_ids(ids[[0, 1, 2, 0]])  # 3 and 4 share the bucket of 4, and the same length
    assert encode_image_jit._cache_size() == n_img
    assert encode_text_jit._cache_size() == n_txt
    # and padding does not change the results
    np.testing.assert_allclose(a, clip.encode_image(tiny_model.params, pixels[:7], tiny_model.config), atol=1e-6)
    np.testing.assert_allclose(b[:3], tiny_model.encode_ids(ids[[0, 1, 2]]), atol=1e-6)
    tiny_model.encode_pixels(pixels[:14])  # a new bucket (16) compiles once more
    assert encode_image_jit._cache_size() == n_img + 1


def test_bfloat16_compute_mode(tiny_model, reference):
    from jaxplain.models.clip import cast_params

    low = tiny_model.with_params(cast_params(tiny_model.params, jnp.bfloat16), same_model=True)
    a = tiny_model.encode_pixels(reference["pixels"])
    b = low.encode_pixels(reference["pixels"])
    assert b.dtype == np.float32
    cos = (a * b).sum(-1)
    assert cos.min() > 0.99, cos
    np.testing.assert_allclose(np.linalg.norm(b, axis=-1), 1.0, atol=1e-5)


def test_trimmed_padding_changes_nothing(tiny_model, reference):
    ids = reference["input_ids"][:4]  # padded to 77; the longest ends at 27, so encode_ids computes 28
    assert np.asarray(clip.eos_positions(ids, tiny_model.config)).max() == 27
    full = clip.encode_text(tiny_model.params, jnp.asarray(ids), tiny_model.config)
    np.testing.assert_allclose(tiny_model.encode_ids(ids), full, atol=1e-6)


def test_text_length_bucket():
    from jaxplain.models.bundle import text_length_bucket

    got = [text_length_bucket(n) for n in (1, 9, 16, 17, 20, 21, 32, 33, 41, 64, 65, 77)]
    assert got == [1, 9, 16, 20, 20, 24, 32, 40, 48, 64, 80, 80]


def test_encode_ids_batches_texts_by_length(tiny_model, reference, monkeypatch):
    from jaxplain.models.family import CLIP

    ids = reference["input_ids"]  # the texts end after 8, 9, 14, 28, 6 and 77 tokens
    shapes = []
    real = CLIP.text_jit

    def spy(params, x, config):
        shapes.append(x.shape)
        return real(params, x, config=config)

    monkeypatch.setitem(CLIP.__dict__, "text_jit", spy)  # the family's jitted encoder, made on first use
    got = tiny_model.encode_ids(ids, batch_size=2)
    # by length: (6, 8), (9, 14), (28, 77); each pair cut after its longer text
    assert shapes == [(2, 8), (2, 14), (2, 77)]
    full = clip.encode_text(tiny_model.params, jnp.asarray(ids), tiny_model.config)
    np.testing.assert_allclose(got, full, atol=1e-6)  # in input order
    shapes.clear()
    tiny_model.encode_ids(ids[[3, 0, 4]], batch_size=4)  # one batch: kept as given, cut after 28 tokens
    assert shapes == [(4, 28)]


def test_unstacked_layers_compute_the_same(tiny_model, reference):
    from jaxplain.models import fingerprint, transformer

    cfg, params = tiny_model.config, tiny_model.params
    flat = clip.unstack_layers(params)
    assert isinstance(flat["vision"]["layers"], tuple) and len(flat["vision"]["layers"]) == cfg.vision.num_layers
    assert transformer.num_layers(flat["text"]["layers"]) == transformer.num_layers(params["text"]["layers"])
    for a, b in zip(jax.tree.leaves(clip.stack_layers(flat)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    inputs = dict(processing=tiny_model.processing, tokenizer=tiny_model.tokenizer)
    assert fingerprint(cfg, flat, **inputs) == fingerprint(cfg, params, **inputs) == tiny_model.fingerprint

    pixels, ids = jnp.asarray(reference["pixels"][:3]), jnp.asarray(reference["input_ids"][:3])
    for fwd, x in ((clip.image_forward, pixels), (clip.text_forward, ids)):
        e1, aux1 = fwd(params, x, cfg, collect=True)
        e2, aux2 = fwd(flat, x, cfg, collect=True)
        np.testing.assert_allclose(e1, e2, atol=1e-6)
        np.testing.assert_allclose(aux1["tokens"], aux2["tokens"], atol=1e-5)
        np.testing.assert_allclose(aux1["attention"], aux2["attention"], atol=1e-6)
        np.testing.assert_allclose(fwd(flat, x, cfg)[0], e1, atol=1e-6)  # the pooled fast path

    # gradients with respect to the taps (the intermediates) agree too
    def tapped(p, tap):
        return clip.image_forward(p, pixels, cfg, taps={"tokens": tap})[0].sum()

    tap = jnp.zeros((cfg.vision.num_layers, 3, cfg.vision.num_positions, cfg.vision.hidden_size))
    np.testing.assert_allclose(jax.grad(tapped, 1)(params, tap), jax.grad(tapped, 1)(flat, tap), atol=1e-5)


def test_every_matrix_product_runs_at_full_precision(tiny_model, inputs):
    """On a GPU, JAX's default float32 product may round to TF32 (1e-4 off on an H100, and batch-shape
    dependent). The towers, their gradients and the loss ask for HIGHEST; a CPU would not show the
    difference in the numbers, so the test reads the traced programs."""
    cfg, params = tiny_model.config, tiny_model.params
    pixels, ids = inputs
    programs = {
        "image": jax.make_jaxpr(lambda p: clip.image_forward(p, pixels, cfg)[0])(params),
        "text": jax.make_jaxpr(lambda p: clip.text_forward(p, ids, cfg)[0])(params),
        "collect": jax.make_jaxpr(lambda p: clip.image_forward(p, pixels, cfg, collect=True)[1]["tokens"])(params),
        "gradient": jax.make_jaxpr(jax.grad(lambda x: clip.image_forward(params, x, cfg)[0][:, 0].sum()))(pixels),
        "loss": jax.make_jaxpr(lambda u, v: contrastive_loss(u, v, jnp.float32(1.0))[0])(
            jnp.ones((4, 8)), jnp.ones((4, 8))
        ),
    }
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    for name, program in programs.items():
        found = dot_precisions(program.jaxpr)
        assert found and all(p == highest for p in found), (name, found)
