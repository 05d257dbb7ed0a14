"""CPC (``stmem_jax.methods.cpc``): the loss against NumPy, one loss on 1 and 8 devices, the
exported encoder and its heads, BatchNorm's running statistics, and pre-training and fine-tuning at
250 Hz (at 100 Hz, resumed, probed and on 8 devices: tests/test_methods.py); a 100 Hz run's exports
(model/ and encoder/ alike, its input through stmem-embed and the API, a linear probe predicted) and
its resumes with another rate or horizon refused."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stmem_jax import methods, models
from stmem_jax.methods import cpc
from tests import eight_devices

LEADS = tuple(range(12))
SMALL = dict(seq_len=30, width=8, depth=2, negatives=6)


def small_model():
    return models.create_model("cpc", "tiny", **SMALL)


def batch(model, size=4, seed=0):
    series = np.random.default_rng(seed).standard_normal((size, 12, model.seq_len)).astype(np.float32)
    return {"series": series} | cpc.Cpc().randomness(model, {"series": series}, jax.random.key(seed))


def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    b, s, d, n, k = 3, 20, 4, 5, 12
    z, pred = rng.standard_normal((b, s, d)), rng.standard_normal((b, s, d))
    negatives = np.asarray(cpc.draw_negatives(jax.random.key(1), b, s, n, k))
    assert negatives.shape == (b, s - k, n) and negatives.min() >= 0 and negatives.max() < s
    assert not np.any(negatives == (np.arange(s - k) + k)[None, :, None])  # never the positive

    total = 0.0
    for t in range(s - k):
        per_example = []
        for i in range(b):
            scores = np.array([pred[i, t] @ z[i, t + k]] + [pred[i, t] @ z[i, j] for j in negatives[i, t]])
            per_example.append(np.log(np.exp(scores).sum()) - scores[0])
        total += np.mean(per_example)  # a batch mean per t, summed over t
    losses = cpc.cpc_losses(jnp.asarray(z, jnp.float32), jnp.asarray(pred, jnp.float32), jnp.asarray(negatives), k)
    np.testing.assert_allclose(float(losses.mean()), total, rtol=1e-5)


def test_negatives_cover_the_other_positions():
    drawn = np.asarray(cpc.draw_negatives(jax.random.key(0), 1, 16, 4000, 12))
    for t in range(4):
        assert set(np.unique(drawn[0, t])) == set(range(16)) - {t + 12}


def test_batch_norm_normalises_with_the_biased_variance_and_runs_the_unbiased_one_as_torch():
    """Norm on (B, T, F) and the running update against NumPy and torch.nn.BatchNorm1d on (B, F, T)
    in training mode: y with the batch's biased variance, running_var with n / (n - 1) of it."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    norm, method = cpc.Norm(), cpc.Cpc()
    variables = norm.init(jax.random.key(0), jnp.zeros((2, 3, 5)))
    extra = {"norm": {"mean": np.zeros(5, np.float32), "var": np.ones(5, np.float32)}}
    bn = torch.nn.BatchNorm1d(5, eps=cpc.NORM_EPS, momentum=1 - cpc.MOMENTUM)
    mean, var = np.zeros(5), np.ones(5)
    for _ in range(3):
        x = (rng.standard_normal((4, 7, 5)) * 3 + 1).astype(np.float32)
        y, (batch_mean, batch_var) = jax.jit(norm.apply)(variables, x)
        n = 4 * 7
        np.testing.assert_allclose(y, (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + cpc.NORM_EPS), atol=1e-5)
        np.testing.assert_allclose(batch_var, x.var((0, 1)) * n / (n - 1), rtol=1e-5)
        mean, var = 0.9 * mean + 0.1 * x.mean((0, 1)), 0.9 * var + 0.1 * x.var((0, 1), ddof=1)
        extra = method.update_extra(None, None, extra, 0.0, {"norm": {"mean": batch_mean, "var": batch_var}})
        np.testing.assert_allclose(extra["norm"]["var"], var, rtol=1e-5)
        expected = bn(torch.from_numpy(x.transpose(0, 2, 1))).detach().numpy().transpose(0, 2, 1)
        np.testing.assert_allclose(y, expected, atol=1e-5)
        np.testing.assert_allclose(extra["norm"]["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(extra["norm"]["var"], bn.running_var.numpy(), rtol=1e-5)


def test_running_statistics_and_export():
    model, method = small_model(), cpc.Cpc()
    params = method.init_params(model, jax.random.key(0), LEADS)
    rows = batch(model)
    loss, stats = jax.jit(lambda p, r: method.loss(model, p, None, r, LEADS))(params, rows)
    extra = method.init_extra(model, params)
    updated = method.update_extra(model, params, extra, 0.5, stats)
    x = np.asarray(rows["series"]).transpose(0, 2, 1) @ np.asarray(params["encoder"]["dense_0"]["kernel"])
    np.testing.assert_allclose(updated["norm_0"]["mean"], 0.1 * x.mean((0, 1)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(updated["norm_0"]["var"], 0.9 + 0.1 * x.var((0, 1), ddof=1), rtol=1e-4)  # unbiased

    # the exported encoder normalises with the running statistics, as the method's validation does
    encoder, variables = method.encoder(model, {"params": params, "extra": updated})
    assert type(encoder).__name__ == "CpcClassifier" and encoder.num_classes == 0
    np.testing.assert_array_equal(variables["params"]["encoder"]["norm_2"]["var"], updated["norm_2"]["var"])
    c = np.asarray(jax.jit(lambda p, s, r: model.apply({"params": p}, s, method=lambda m, x: m.encoder(x, r)[1]))(
        params, rows["series"], updated))
    pooled = np.concatenate([c.mean(1), c.max(1), c[:, -1]], axis=-1)
    np.testing.assert_allclose(jax.jit(encoder.apply)(variables, rows["series"]), pooled, rtol=1e-5, atol=1e-6)
    assert c.shape == (4, model.seq_len, model.width)
    # a random encoder's state: the initial statistics; no state at all (a CPC model/ of an older version) is refused
    _, fresh = method.encoder(model, {"params": params, "extra": method.init_extra(model, params)})
    np.testing.assert_array_equal(fresh["params"]["encoder"]["norm_0"]["var"], np.ones(model.width))
    with pytest.raises(ValueError, match="needs the BatchNorm running statistics .* use the run's encoder/"):
        method.encoder(model, {"params": params})


def test_classifier_heads_and_frozen_statistics():
    model, method = small_model(), cpc.Cpc()
    params = method.init_params(model, jax.random.key(0), LEADS)
    encoder, variables = method.encoder(model, {"params": params, "extra": method.init_extra(model, params)})
    series = batch(model, 3)["series"]
    classifier = encoder.clone(num_classes=5)
    params = jax.jit(classifier.init)(jax.random.key(1), series)["params"] | variables["params"]
    logits = jax.jit(lambda p, s: classifier.apply({"params": p}, s, train=True, rngs={"dropout": jax.random.key(2)}))(
        params, series)
    assert logits.shape == (3, 5) and set(params["head"]) == {"norm_0", "dense_0", "norm_1", "dense_1"}
    assert params["head"]["dense_0"]["kernel"].shape == (3 * model.width, cpc.HIDDEN)

    grads = jax.jit(jax.grad(lambda p: classifier.apply({"params": p}, series).sum()))(params)
    for name in ("mean", "var"):  # statistics are parameters, never trained
        assert not np.any(grads["encoder"]["norm_1"][name]) and not np.any(grads["head"]["norm_0"][name])
    assert np.any(grads["encoder"]["norm_1"]["scale"])

    linear = encoder.clone(num_classes=5, linear_head=True)
    head = linear.init(jax.random.key(0), jnp.zeros((1, linear.feature_size)), method=lambda m, f: m.head(f))
    assert jax.tree.map(np.shape, head["params"]["head"]) == {"kernel": (3 * model.width, 5), "bias": (5,)}
    apply = jax.jit(encoder.apply, static_argnames="leads")
    features = apply(variables, series[:, :6], leads=LEADS[:6])  # limb leads, the rest zero-filled
    assert features.shape == (3, 3 * model.width)
    full = series.copy()
    full[:, 6:] = 0
    np.testing.assert_allclose(features, apply(variables, full), rtol=1e-6)


def test_model_description_and_flops():
    model = models.create_model("cpc", "tiny", seq_len=1000, width=512, depth=2, negatives=128)
    assert models.model_from_config(models.model_config(model)) == model
    w, s = 512, 1000
    lstm = 2 * s * 2 * 4 * (2 * w) * w
    expected = 2 * s * (12 * w + 3 * w * w) + lstm + 2 * s * w * w + 2 * (s - 12) * s * w
    assert model.forward_flops(12) == expected
    assert model.activation(12) > 0 and model.encoder_tokens(12) == s
    assert methods.get("cpc").splittable is False
    with pytest.raises(ValueError, match="seq_len"):
        models.create_model("cpc", "tiny", seq_len=0)


def test_loss_sharded():
    """Run by test_the_same_on_eight_devices: BatchNorm over the global batch and the loss on an
    8-device mesh, as on one device."""
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    model, method = small_model(), cpc.Cpc()
    params = method.init_params(model, jax.random.key(0), LEADS)
    rows = batch(model, 16)

    def fn(p, r):
        return jax.value_and_grad(lambda q: method.loss(model, q, None, r, LEADS), has_aux=True)(p)

    one = jax.device_put((params, rows), jax.devices()[0])
    (loss1, stats1), grads1 = jax.jit(fn)(*one)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    sharded = jax.device_put(rows, NamedSharding(mesh, P("data")))
    (loss8, stats8), grads8 = jax.jit(fn)(jax.device_put(params, NamedSharding(mesh, P())), sharded)
    assert len(sharded["series"].sharding.device_set) == 8
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((stats8, grads8)), jax.tree.leaves((stats1, grads1))):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


@pytest.mark.slow
def test_the_same_on_eight_devices():
    eight_devices.run_pytest(__file__, "loss_sharded", passed=1)


def _set(config, values):
    for key, value in values.items():
        *path, field = key.split(".")
        section = config
        for name in path:
            section = section[name]
        section[field] = value


@pytest.mark.slow
@pytest.mark.parametrize("rate,crop", [(0, 2250)])  # 100 Hz: tests/test_methods.py (cpc:tiny), resumed, on 8 devices
def test_pretrain_finetune_and_probe(synthetic_shards, tmp_path, rate, crop):
    from stmem_jax.model_dir import load_model
    from stmem_jax.train import downstream, pretrain
    from stmem_jax.train.config import downstream as downstream_config, load_config

    config = load_config("cpc", "tiny")
    sizes = {"data.sample_rate": rate, "data.crop_samples": crop}
    _set(config, {**sizes, "model.width": 8, "model.negatives": 8, "train.batch_size": 8, "train.num_steps": 3,
                  "train.warmup_steps": 1, "log.every_steps": 1, "eval.every_steps": 3, "eval.batch_size": 32,
                  "checkpoint.asynchronous": False, "data.dir": synthetic_shards})
    workdir = str(tmp_path / "pretrain")
    summary = pretrain.train(config, workdir)
    assert summary["step"] == 3
    encoder, variables = load_model(os.path.join(workdir, "encoder"))
    assert type(encoder).__name__ == "CpcClassifier" and encoder.seq_len == crop and encoder.width == 8
    norm = variables["params"]["encoder"]["norm_0"]
    assert set(norm) == {"scale", "bias", "mean", "var"}
    # the running statistics moved in the method's extra state and reached the export (3 steps of momentum 0.9)
    assert np.abs(np.asarray(norm["mean"])).min() > 0 and np.all(np.asarray(norm["var"]) != 1)

    for mode, steps in (("finetune", 2), ("linprobe", 4))[:2 if rate else 1]:  # the probe once: rate-blind
        run = downstream_config()
        _set(run, {**sizes, "train.batch_size": 16, "train.num_steps": steps, "train.min_steps": 0,
                   "train.warmup_steps": 1, "eval.batch_size": 32, "model.drop_path": 0.0, "data.augment": False,
                   "data.dir": synthetic_shards, "data.task": "rhythm", "mode": mode, "init": workdir,
                   "checkpoint.asynchronous": False})
        result = downstream.train(run, str(tmp_path / mode))
        assert np.isfinite(result["test"]["auroc"])


def md5_tree(root):
    """``{path: md5}`` of every file under ``root``: what a refused run may not touch."""
    import hashlib

    return {os.path.join(d, f): hashlib.md5(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def cpc100(synthetic_shards, tmp_path_factory):
    """A finished CPC pre-training at 100 Hz (cpc:tiny: 1000-sample crops resampled from the 250 Hz
    shards in the pipeline), 2 steps, and its config."""
    from stmem_jax.train import pretrain
    from stmem_jax.train.config import load_config

    config = load_config("cpc", "tiny")
    _set(config, {"model.width": 8, "model.negatives": 8, "train.batch_size": 8, "train.num_steps": 2,
                  "train.warmup_steps": 1, "log.every_steps": 1, "eval.every_steps": 0,
                  "checkpoint.asynchronous": False, "data.dir": synthetic_shards})
    workdir = str(tmp_path_factory.mktemp("cpc100") / "pretrain")
    pretrain.train(config, workdir)
    return workdir, config


@pytest.mark.slow
def test_a_100_hz_encoder_gets_100_hz_crops_from_model_or_encoder_through_embed_and_the_api(cpc100, synthetic_shards,
                                                                                            tmp_path):
    from stmem_jax import api, embed, infer
    from stmem_jax.core.ecgfile import read_ecg
    from stmem_jax.data.pipeline import InputConfig, make_dataset

    workdir, _ = cpc100
    recipe = api.input_recipe(workdir)
    assert (recipe.fs, recipe.prepared_fs, recipe.crop_samples) == (100, 250, 1000)
    # model/ holds the running statistics too: its encoder is encoder/'s
    series = np.random.default_rng(0).standard_normal((3, 1, 12, 1000)).astype(np.float32)
    features = []
    for name in ("model", "encoder"):
        encoder, variables = infer.load_encoder(os.path.join(workdir, name))
        assert api.input_recipe(os.path.join(workdir, name)) == recipe
        features.append(np.asarray(infer.features_fn(encoder, LEADS)(variables["params"], series)))
    np.testing.assert_allclose(features[0], features[1], rtol=1e-6, atol=1e-7)

    # stmem-embed of a prepared split: the pipeline's 100 Hz crops, as fine-tuning reads them
    output = str(tmp_path / "split.npz")
    assert embed.main(["--model", workdir, "--data", synthetic_shards, "--split", "test", "--batch-size", "16",
                       "--output", output]) == 0
    split = np.load(output)
    pipeline = InputConfig(synthetic_shards, split="test", batch_size=16, training=False, sample_rate=100,
                           crop_samples=1000)
    batch = next(make_dataset(pipeline, process_index=0, process_count=1).as_numpy_iterator())
    encoder, variables = api.load_encoder(workdir)
    expected = infer.features_fn(encoder, LEADS)(variables["params"], batch["series"])
    ids = [r.decode() for r in batch["record_id"]]
    np.testing.assert_allclose(split["features"][:len(ids)], expected, rtol=1e-4, atol=1e-6)
    assert list(split["record_id"][:len(ids)]) == ids

    # the API on the native recording (500 Hz): the same crops, the same features
    native = os.path.join(os.path.dirname(synthetic_shards), "native", "records500")
    ecg = read_ecg(os.path.join(native, f"{int(ids[0]) // 1000 * 1000:05d}", f"{int(ids[0]):05d}_hr.hea"))
    np.testing.assert_allclose(api.model_inputs(ecg.signal, ecg.fs, recipe=recipe)[0], batch["series"][0], atol=2e-3)
    np.testing.assert_allclose(api.embed(encoder, variables, [ecg])[0], split["features"][0], rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_a_linear_probe_of_cpc_predicts_and_its_pretraining_resumes_only_as_itself(cpc100, synthetic_shards,
                                                                                    tmp_path):
    from stmem_jax import predict
    from stmem_jax.train import downstream, pretrain
    from stmem_jax.train.config import downstream as downstream_config

    workdir, config = cpc100
    run = downstream_config()
    _set(run, {"train.batch_size": 16, "train.num_steps": 3, "train.min_steps": 0, "train.warmup_steps": 1,
               "eval.batch_size": 32, "eval.crops": 1, "data.augment": False, "data.dir": synthetic_shards,
               "data.task": "rhythm", "mode": "linprobe", "init": workdir, "checkpoint.asynchronous": False})
    probe = str(tmp_path / "probe")
    downstream.train(run, probe)
    model, variables, info = predict.load_classifier(probe)
    assert model.linear_head and (info["recipe"].fs, info["recipe"].crop_samples) == (100, 1000)
    saved = np.load(os.path.join(probe, "test_predictions.npz"))
    out = predict.predict_split(model, variables, info, synthetic_shards, "test", 32)
    by_id = dict(zip(out["record_id"], out["outputs"]))
    np.testing.assert_allclose([by_id[r] for r in saved["record_id"]], saved["probs"], atol=1e-5)

    # resumed at 250 Hz, or with another horizon: refused in one line naming the changes, nothing touched
    before = md5_tree(workdir)
    for changes, says in [({"data.sample_rate": 0, "data.crop_samples": 2250},
                           "data.crop_samples (1000 -> 2250), data.sample_rate (100 -> 0)"),
                          ({"model.horizon": 6}, "model.horizon (None -> 6)")]:
        other = config.copy_and_resolve_references()
        _set(other, changes)
        with pytest.raises(ValueError, match=r"holds checkpoints of another run .*" + re.escape(says)) as error:
            pretrain.train(other, workdir)
        assert "\n" not in str(error.value)
    assert md5_tree(workdir) == before
