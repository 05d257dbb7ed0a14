import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from conftest import PUBLIC_DECODER
from stmem_jax import methods
from stmem_jax.methods.st_mem import STMEM
from stmem_jax.models import (PRESETS, count_parameters, create_model, init_variables, kinds, model_config,
                              model_from_config)

TINY = {k: PRESETS["tiny"][k] for k in ("width", "depth", "heads", "decoder_width", "decoder_depth", "decoder_heads")}
TINY |= PUBLIC_DECODER  # conftest's tiny_stmem
TINY["patch_size"] = 75


def noise_for(series, seed=0):
    batch, channels, length = series.shape
    return np.random.default_rng(seed).random((batch, channels, length // 75)).astype(np.float32)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("kind", sorted(kinds()))
def test_output_shapes_for_every_kind_and_preset(kind, preset):
    model = create_model(kind, preset, **({"num_classes": 5} if kind.endswith("classifier") else {}))
    series = jax.ShapeDtypeStruct((3, 12, 2250), jnp.float32)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    rngs = {"masking": jax.random.key(1)}
    out = jax.eval_shape(lambda v, x: model.apply(v, x, rngs=rngs), variables, series)
    if kind.endswith("classifier"):
        assert out.shape == (3, 5)
    elif kind == "st_mem":
        assert out["pred"].shape == (3, 12, 30, 75) and out["mask"].shape == (3, 12, 30) and out["loss"].shape == ()
    elif kind == "mtae":
        assert out["pred"].shape == (3, 30, 75 * 12) and out["mask"].shape == (3, 30)
    elif kind == "moco_v3":  # the predictor's output
        assert out.shape == (3, model.out_dim)
    elif kind == "cmsc":  # the representation
        assert out.shape == (3, model.width)
    elif kind == "cpc":  # a latent and a prediction per sample
        assert out["z"].shape == out["pred"].shape == (3, 2250, model.width)
    else:
        assert out["pred"].shape == (3, 12, 2250) and out["mask"].shape == (3, 12)


def test_vit_base_parameter_count_as_the_paper_counts():
    model = create_model("st_mem", "vit_base")
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    assert round(count_parameters(model, variables) / 1e6, 2) == 88.53
    encoder = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]["encoder"]))
    assert round((encoder + 32 * 768) / 1e6, 2) == 85.15  # encoder with its positional table


@pytest.mark.slow
def test_configurable_length_patch_and_leads():
    model = create_model("st_mem", "tiny", seq_len=1000, patch_size=50, num_leads=8)
    variables = init_variables(model, jax.random.key(0))
    out = model.apply(variables, jnp.ones((2, 8, 1000)), rngs={"masking": jax.random.key(1)})
    assert out["pred"].shape == (2, 8, 20, 50)
    np.testing.assert_array_equal(out["mask"].sum(-1), 15)
    with pytest.raises(ValueError, match=r"\(batch, leads, 1000\)"):
        model.apply(variables, jnp.ones((2, 8, 900)), rngs={"masking": jax.random.key(1)})


def test_pretraining_loss_matches_numpy_reference(tiny_stmem, series):
    model, variables = tiny_stmem
    noise = noise_for(series)
    out = model.apply(variables, series, noise=noise)
    loss, pred, mask = reference.pretrain_forward(variables["params"], series, noise, TINY)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["pred"], pred, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(out["mask"], mask)


@pytest.mark.slow
def test_pretraining_with_named_lead_subset_matches_reference(tiny_stmem, series):
    model, variables = tiny_stmem
    subset = series[:, [7, 1]]
    noise = noise_for(subset, seed=3)
    out = model.apply(variables, subset, noise=noise, leads=("V2", "II"))
    loss, _, _ = reference.pretrain_forward(variables["params"], subset, noise, TINY, lead_ids=[7, 1])
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-5, atol=1e-5)


def test_classifier_features_and_logits_match_numpy_reference(tiny_classifier, series):
    model, variables = tiny_classifier
    logits = model.apply(variables, series)
    np.testing.assert_allclose(logits, reference.classifier_forward(variables["params"], series, TINY),
                               rtol=1e-5, atol=1e-5)
    headless = create_model("st_mem_classifier", "tiny")
    features = headless.apply({"params": {"encoder": variables["params"]["encoder"]}}, series)
    assert features.shape == (2, 128)
    expected = reference.classifier_forward({"encoder": variables["params"]["encoder"]}, series, TINY)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_rng_masking_is_reproducible(tiny_stmem, series):
    model, variables = tiny_stmem
    a = model.apply(variables, series, rngs={"masking": jax.random.key(5)})
    b = model.apply(variables, series, rngs={"masking": jax.random.key(5)})
    c = model.apply(variables, series, rngs={"masking": jax.random.key(6)})
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert a["loss"] == b["loss"]
    assert not np.array_equal(a["mask"], c["mask"])


def test_decoder_attention_never_crosses_leads(tiny_stmem):
    model, variables = tiny_stmem
    batch, channels, kept = 2, 12, 7
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((batch, channels * (kept + 2), 128)).astype(np.float32)
    ids_restore = np.stack([np.stack([rng.permutation(30) for _ in range(channels)]) for _ in range(batch)])
    base = model.apply(variables, latent, ids_restore, method=STMEM.decode)
    changed = latent.copy()
    changed[:, 3 * (kept + 2):4 * (kept + 2)] += rng.standard_normal((batch, kept + 2, 128))
    out = model.apply(variables, changed, ids_restore, method=STMEM.decode)
    assert base.shape == (batch, channels, 30, 75)
    others = [c for c in range(channels) if c != 3]
    np.testing.assert_array_equal(out[:, others], base[:, others])
    assert np.abs(out[:, 3] - base[:, 3]).min() > 0


@pytest.mark.slow
def test_lead_selection_by_name(tiny_classifier, series):
    model, variables = tiny_classifier
    lead_ii = series[:, 1:2]
    by_name = model.apply(variables, lead_ii, leads=("II",))
    np.testing.assert_allclose(by_name, reference.classifier_forward(variables["params"], lead_ii, TINY, [1]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(by_name, model.apply(variables, lead_ii, leads=(1,)))
    assert not np.allclose(by_name, model.apply(variables, lead_ii, leads=("I",)))
    # the public code's rule: a 1-lead model uses embedding 0 whatever the lead
    first_k = model.clone(first_k_leads=True)
    np.testing.assert_array_equal(first_k.apply(variables, lead_ii, leads=("II",)),
                                  model.apply(variables, lead_ii, leads=("I",)))
    # limb leads by set name, and any order: permuting leads with their names changes nothing
    limb = series[:, :6]
    np.testing.assert_array_equal(model.apply(variables, limb, leads="limb"), model.apply(variables, limb))
    order = [4, 0, 5, 2]
    names = ("aVL", "I", "aVF", "III")
    np.testing.assert_allclose(model.apply(variables, series[:, order], leads=names),
                               model.apply(variables, series[:, sorted(order)], leads=("I", "III", "aVL", "aVF")),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="2 leads named"):
        model.apply(variables, lead_ii, leads=("I", "II"))


def test_dropout_and_drop_path_only_in_training(series):
    model = create_model("st_mem_classifier", "tiny", num_classes=3, dropout=0.1, attn_dropout=0.1, drop_path=0.2)
    variables = init_variables(model, jax.random.key(0))
    eval_a = model.apply(variables, series)
    np.testing.assert_array_equal(eval_a, model.apply(variables, series))
    train = lambda key: model.apply(variables, series, train=True, rngs={"dropout": key})
    np.testing.assert_array_equal(train(jax.random.key(1)), train(jax.random.key(1)))
    assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)))
    assert not np.allclose(train(jax.random.key(1)), eval_a)


def test_classifier_embeddings_are_trainable_standard_normal_and_pretraining_ones_small():
    classifier = create_model("st_mem_classifier", "vit_small", num_classes=2)
    params = init_variables(classifier, jax.random.key(0))["params"]["encoder"]
    assert params["pos_embedding"].shape == (32, 384)
    assert 0.9 < float(np.std(params["pos_embedding"])) < 1.1
    assert 0.9 < float(np.std(params["lead_embeddings"])) < 1.1
    pretrain = init_variables(create_model("st_mem", "vit_small"), jax.random.key(0))["params"]
    assert "pos_embedding" not in pretrain["encoder"]
    assert 0.015 < float(np.std(pretrain["encoder"]["lead_embeddings"])) < 0.025
    assert 0.015 < float(np.std(pretrain["mask_token"])) < 0.025
    qkv = pretrain["encoder"]["blocks"]["block_0"]["attn"]["qkv"]["kernel"]  # Xavier over the fused matrix
    limit = np.sqrt(6 / (384 + 3 * 384))
    assert float(np.abs(qkv).max()) <= limit and float(np.abs(qkv).max()) > 0.95 * limit
    np.testing.assert_array_equal(pretrain["encoder"]["blocks"]["block_0"]["attn"]["qkv"]["bias"], 0)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_jit_forward_and_grad_for_every_preset(preset):
    model = create_model("st_mem", preset)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    series = jax.ShapeDtypeStruct((2, 12, 2250), jnp.float32)

    def loss(params, x, key):
        return model.apply({"params": params}, x, rngs={"masking": key})["loss"]

    key = jax.random.key(0)
    forward = jax.jit(loss).lower(variables["params"], series, key).compile()
    grad = jax.jit(jax.grad(loss)).lower(variables["params"], series, key).compile()
    if preset == "tiny":  # run the small one for real
        real = init_variables(model, key)
        x = np.random.default_rng(0).standard_normal((2, 12, 2250)).astype(np.float32)
        value = forward(real["params"], x, key)
        grads = grad(real["params"], x, key)
        assert np.isfinite(value)
        assert jax.tree.structure(grads) == jax.tree.structure(real["params"])
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters(tiny_stmem, series):
    model, variables = tiny_stmem
    half = model.clone(dtype=jnp.bfloat16)
    fresh = init_variables(half, jax.random.key(0))
    assert {x.dtype for x in jax.tree.leaves(fresh)} == {jnp.dtype(jnp.float32)}
    noise = noise_for(series)
    out16 = half.apply(variables, series, noise=noise)
    out32 = model.apply(variables, series, noise=noise)
    assert out16["pred"].dtype == jnp.bfloat16 and out16["loss"].dtype == jnp.float32
    np.testing.assert_allclose(out16["loss"], out32["loss"], rtol=0.05)


@pytest.mark.parametrize("kind", ["mtae", "mlae"])
def test_baselines_mask_their_own_axis_and_lower_loss_only_on_removed_tokens(kind, series):
    model = create_model(kind, "tiny")
    variables = init_variables(model, jax.random.key(0))
    tokens = 30 if kind == "mtae" else 12
    noise = np.random.default_rng(0).random((2, tokens)).astype(np.float32)
    out = model.apply(variables, series, noise=noise)
    np.testing.assert_array_equal(out["mask"].sum(-1), tokens - int(tokens * 0.25))
    assert np.isfinite(out["loss"])
    if kind == "mtae":  # token t holds samples t*75..t*75+74 of all leads, sample-major
        tokens_of = model.apply(variables, series, method=lambda m, x: m.encoder.tokenize(x))
        np.testing.assert_array_equal(tokens_of[1, 2, :12], series[1, :, 150])
        np.testing.assert_array_equal(tokens_of[1, 2, 12:24], series[1, :, 151])
    # fewer leads enter zero-filled at their standard positions (here V1 and I, in that order)
    subset = model.apply(variables, series[:, [6, 0]], noise=noise, leads=("V1", "I"))
    filled = np.zeros_like(series)
    filled[:, [0, 6]] = series[:, [0, 6]]
    np.testing.assert_allclose(subset["loss"], model.apply(variables, filled, noise=noise)["loss"], rtol=1e-6)


def test_model_config_round_trip():
    for kind in kinds():
        model = create_model(kind, "tiny", dtype=jnp.bfloat16)
        assert model_from_config(model_config(model)) == model
    with pytest.raises(ValueError, match="unknown preset"):
        create_model("st_mem", "huge")
    with pytest.raises(ValueError, match="no field"):
        create_model("st_mem", "tiny", num_classes=3)


@pytest.mark.parametrize("kind", ["st_mem", "mlae"])
def test_pretrained_encoder_carries_the_pretrained_weights(kind, series):
    model = create_model(kind, "tiny")
    variables = init_variables(model, jax.random.key(0))
    encoder, clf_vars = methods.get(kind).encoder(model, variables)
    classifier = encoder.clone(num_classes=3, dropout=0.1)
    head = init_variables(classifier, jax.random.key(2))["params"]["head"]
    clf_vars = {"params": {**clf_vars["params"], "head": head}}
    assert classifier.num_classes == 3 and classifier.dropout == 0.1 and classifier.width == model.width
    np.testing.assert_array_equal(clf_vars["params"]["encoder"]["pos_embedding"], model.fixed_tables()["pos_embedding"])
    blocks = clf_vars["params"]["encoder"]["blocks"]
    assert jax.tree.all(jax.tree.map(np.array_equal, blocks, variables["params"]["encoder"]["blocks"]))
    fresh = init_variables(classifier, jax.random.key(1))
    assert jax.tree.structure(fresh["params"]) == jax.tree.structure(clf_vars["params"])
    assert classifier.apply(clf_vars, series).shape == (2, 3)


def test_remat_keeps_parameters_loss_and_gradients(series):
    plain, remat = (create_model("st_mem", "tiny", remat=flag) for flag in (False, True))
    variables = init_variables(plain, jax.random.key(0))
    assert jax.tree.structure(variables) == jax.tree.structure(init_variables(remat, jax.random.key(0)))

    def value_and_grad(model):
        loss = lambda p: model.apply({"params": p}, series, rngs={"masking": jax.random.key(1)})["loss"]
        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    (expected, grads), (got, remat_grads) = value_and_grad(plain), value_and_grad(remat)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), remat_grads, grads)


@pytest.mark.slow
@pytest.mark.parametrize("indicators", ["both", "lead", "sep", "none"])
def test_lead_indicators_ablation_drops_what_it_names_and_keeps_the_rest(indicators, series):
    """``lead_indicators``: without lead embeddings the encoder cannot tell leads apart (permuting the
    leads with their names changes no feature); without SEP tokens each lead holds its patches only."""
    model = create_model("st_mem", "tiny", lead_indicators=indicators)
    params = init_variables(model, jax.random.key(0))["params"]
    assert ("sep_embedding" in params["encoder"]) == (indicators in ("both", "sep"))
    assert ("lead_embeddings" in params["encoder"]) == (indicators in ("both", "lead"))
    out = model.apply({"params": params}, series, noise=noise_for(series))
    assert out["pred"].shape == (2, 12, 30, 75) and np.isfinite(out["loss"])
    seps = 2 if indicators in ("both", "sep") else 0
    assert model.encoder_tokens(12) == 12 * (7 + seps)

    encoder, variables = methods.get("st_mem").encoder(model, {"params": params})
    assert encoder.lead_indicators == indicators
    order = [3, 0, 7, 5]
    names = [("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")[i] for i in order]
    permuted = encoder.apply(variables, series[:, order], leads=names)
    sorted_ = encoder.apply(variables, series[:, sorted(order)], leads=sorted(order))
    if indicators in ("both", "lead"):
        assert not np.allclose(permuted, encoder.apply(variables, series[:, order], leads=sorted(order)), atol=1e-4)
    else:
        np.testing.assert_allclose(permuted, encoder.apply(variables, series[:, order], leads=sorted(order)),
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(permuted, sorted_, rtol=1e-4, atol=1e-5)  # names, not positions, tell the leads
    with pytest.raises(ValueError, match="lead_indicators must be one of"):
        init_variables(create_model("st_mem", "tiny", lead_indicators="some"), jax.random.key(0))
