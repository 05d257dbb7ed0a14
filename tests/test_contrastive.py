"""MoCo v3 and CMSC: their losses against NumPy, over the global batch on 8 devices as on 1, the
momentum encoder and the frozen patch embedding, and CMSC's refusal of batches of one patient."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stmem_jax import methods, models
from stmem_jax.methods.cmsc import clocs_loss, cmsc_terms, fairseq_pair_terms
from stmem_jax.methods.contrastive import normalize
from stmem_jax.methods.moco_v3 import moco_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(width=64, depth=1, heads=1, mlp_dim=128, seq_len=450, num_leads=12)


def _unit(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_moco_loss_is_symmetric_infonce_over_the_batch_times_two_tau():
    rng = np.random.default_rng(0)
    q1, q2, k1, k2 = (_unit(rng, 6, 8) for _ in range(4))
    tau = 0.2
    expected = []
    for i in range(6):
        a = -(q1[i] @ k2[i] / tau - np.log(np.exp(q1[i] @ k2.T / tau).sum()))
        b = -(q2[i] @ k1[i] / tau - np.log(np.exp(q2[i] @ k1.T / tau).sum()))
        expected.append((a + b) * 2 * tau)
    np.testing.assert_allclose(moco_loss(q1, q2, k1, k2, tau), expected, rtol=1e-5)
    # padding keys (invalid) are no negatives of anyone
    valid = np.array([True] * 5 + [False])
    got = moco_loss(q1, q2, k1, k2, tau, jnp.asarray(valid))
    np.testing.assert_allclose(got[:5], moco_loss(q1[:5], q2[:5], k1[:5], k2[:5], tau), rtol=1e-5)


def clocs_reference(e1, e2, patients, tau):
    """CLOCS's CMSC loss (Kiyasseh et al. 2021, their public code): cosine similarity / tau of every
    (segment 1, segment 2) pair; the mean of the groups' means: the diagonal by rows (softmax over
    the row), the diagonal by columns, same-patient pairs above the diagonal by rows, below it by
    columns; a group without entries is left out."""
    sim = e1 @ e2.T / np.outer(np.linalg.norm(e1, axis=1), np.linalg.norm(e2, axis=1)) / tau
    exp = np.exp(sim)
    row_sum, col_sum, diag = exp.sum(axis=1), exp.sum(axis=0), np.diag(exp)
    same = patients[:, None] == patients[None, :]
    groups = [-np.log(diag / row_sum).mean(), -np.log(diag / col_sum).mean()]
    r, c = np.nonzero(np.triu(same, 1))
    if len(r):
        groups.append(-np.log(exp[r, c] / row_sum[r]).mean())
    r, c = np.nonzero(np.tril(same, -1))
    if len(r):
        groups.append(-np.log(exp[r, c] / col_sum[c]).mean())
    return np.mean(groups)


def test_cmsc_clocs_weighting_is_the_mean_of_four_group_means_and_of_two_without_same_patient_pairs():
    rng = np.random.default_rng(2)
    e1, e2 = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))  # not normalised: CLOCS divides by the norms
    tau = 0.1

    @jax.jit
    def clocs(e1, e2, patients, valid):
        return clocs_loss(*cmsc_terms(normalize(e1), normalize(e2), patients, tau, valid))

    def loss(patients, valid=None, n=6):
        return float(clocs(e1[:n], e2[:n], patients, np.ones(n, bool) if valid is None else valid))

    patients = np.array([3, 7, 3, 9, 7, 3])  # three segments of patient 3, two of 7
    assert np.triu(patients[:, None] == patients[None, :], 1).sum() == 4  # 4 pairs above, 4 below, 6 diagonal
    np.testing.assert_allclose(loss(patients), clocs_reference(e1, e2, patients, tau), rtol=1e-5)
    distinct = np.arange(6)  # no two segments of one patient: the two diagonal groups only
    np.testing.assert_allclose(loss(distinct), clocs_reference(e1, e2, distinct, tau), rtol=1e-5)
    # a padded example is neither a positive nor a negative
    valid = np.array([True] * 5 + [False])
    np.testing.assert_allclose(loss(patients, valid), loss(patients[:5], n=5), rtol=1e-5)
    np.testing.assert_allclose(loss(patients[:5], n=5), clocs_reference(e1[:5], e2[:5], patients[:5], tau), rtol=1e-5)


def test_cmsc_fairseq_weighting_averages_every_positive_pairs_row_and_column_terms():
    rng = np.random.default_rng(1)
    e1, e2 = _unit(rng, 5, 8), _unit(rng, 5, 8)
    patients = np.array([3, 7, 3, 9, 7])
    tau = 0.1
    logits = e1 @ e2.T / tau
    rows, columns = _log_softmax(logits, 1), _log_softmax(logits, 0)
    positive = patients[:, None] == patients[None, :]
    assert positive.sum() == 9  # 5 adjacent pairs, (0, 2), (2, 0), (1, 4), (4, 1)
    expected = -(rows[positive].mean() + columns[positive].mean()) / 2
    row_terms, column_terms, mask = cmsc_terms(jnp.asarray(e1), jnp.asarray(e2), jnp.asarray(patients), tau)
    np.testing.assert_array_equal(mask, positive)
    fairseq = fairseq_pair_terms(row_terms, column_terms, mask).sum() / mask.sum()
    np.testing.assert_allclose(fairseq, expected, rtol=1e-5)
    assert abs(float(clocs_loss(row_terms, column_terms, mask)) - expected) > 1e-3  # the two weightings differ


class _Flat:
    """A stand-in for CMSC's ViT: the representation of a segment is its flattened signal."""

    temperature = 0.1

    def __init__(self, positives):
        self.positives = positives

    def apply(self, variables, x, leads=None):
        return jnp.reshape(x, (x.shape[0], -1))


@pytest.mark.parametrize("positives", [None, "fairseq"])
def test_cmsc_method_loss_follows_model_positives_with_clocs_by_default(positives):
    from stmem_jax.train.config import load_config

    config = load_config("cmsc:tiny")
    assert config.model.positives == "clocs"
    if positives:
        config.model.positives = positives
    model = methods.get("cmsc").model(config, tuple(range(12)))
    assert model.positives == (positives or "clocs")
    with pytest.raises(ValueError, match="model.positives='both'"):
        models.create_model("cmsc", "tiny", positives="both")

    method, stand_in = methods.get("cmsc"), _Flat(model.positives)
    rows = _rows("cmsc", 6, 8, seed=3)
    rows["patient"] = np.array([0, 1, 0, 2, 1, 0], np.int32)
    e1, e2 = (rows[k].reshape(6, -1).astype(np.float64) for k in ("segment1", "segment2"))
    if model.positives == "clocs":
        expected = clocs_reference(e1, e2, rows["patient"], 0.1)
    else:
        e1, e2 = e1 / np.linalg.norm(e1, axis=1, keepdims=True), e2 / np.linalg.norm(e2, axis=1, keepdims=True)
        positive = rows["patient"][:, None] == rows["patient"][None, :]
        logits = e1 @ e2.T / 0.1
        expected = -(_log_softmax(logits, 1)[positive].mean() + _log_softmax(logits, 0)[positive].mean()) / 2
    np.testing.assert_allclose(float(method.loss(stand_in, None, None, rows, None)), expected, rtol=1e-4)
    values = method.validation(stand_in, None, None, rows | {"valid": np.ones(6, bool)}, None)
    assert values.shape == (6,) and np.isfinite(values).all()
    if model.positives == "clocs":  # each example: its validation batch's loss
        np.testing.assert_allclose(values, expected, rtol=1e-4)


def _rows(name, batch, seq_len, seed=0):
    rng = np.random.default_rng(seed)
    series = lambda n: rng.standard_normal((batch, 12, n)).astype(np.float32)  # noqa: E731
    if name == "moco_v3":
        return {"view1": series(seq_len), "view2": series(seq_len)}
    return {"segment1": series(seq_len // 2), "segment2": series(seq_len // 2),
            "patient": rng.integers(0, batch // 2, batch).astype(np.int32)}


def _model(name):
    fields = dict(SMALL, hidden_dim=32, out_dim=16) if name == "moco_v3" else dict(SMALL)
    return models.create_model(name, "tiny", **fields)


LOSS_ON_DEVICES = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
sys.path.insert(0, {root!r})
from tests.test_contrastive import _model, _rows
from stmem_jax import methods
from stmem_jax import mesh as meshlib
out = {{}}
for name in ("moco_v3", "cmsc"):
    method, model = methods.get(name), _model(name)
    leads = tuple(range(12))
    params = method.init_params(model, jax.random.key(0), leads)
    extra = method.init_extra(model, params)
    rows = _rows(name, 16, model.seq_len)
    loss = jax.jit(lambda p, r: method.loss(model, p, extra, r, leads))
    one = jax.device_put(rows, jax.devices()[0])
    mesh = Mesh(np.array(jax.devices()), ("data",))
    eight = jax.device_put(rows, NamedSharding(mesh, PartitionSpec("data")))
    fsdp = meshlib.make_mesh(fsdp=2)  # 4 x 2: the batch over both axes, the parameters split over fsdp
    sharded = jax.device_put(params, meshlib.state_shardings(fsdp, params))
    out[name] = [len(jax.devices()), float(loss(params, one)), float(loss(params, eight)),
                 float(loss(sharded, jax.device_put(rows, meshlib.batch_sharding(fsdp))))]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_the_loss_over_a_batch_split_on_eight_devices_is_the_loss_on_one():
    """Batch statistics and the negatives span the global batch, whatever the device count and mesh
    (8 x data; 4 x data by 2 x fsdp with the parameters split)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", LOSS_ON_DEVICES.format(root=ROOT)], env=env, capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    for name, (devices, one, eight, fsdp) in json.loads(result.stdout.strip().splitlines()[-1]).items():
        assert devices == 8
        np.testing.assert_allclose([eight, fsdp], [one, one], rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_moco_step_keeps_the_patch_embedding_and_moves_the_momentum_encoder_by_its_schedule():
    import optax

    from stmem_jax.train import loop, steps

    method, model = methods.get("moco_v3"), _model("moco_v3")
    leads = tuple(range(12))
    params = method.init_params(model, jax.random.key(0), leads)
    tx = optax.chain(optax.adamw(1e-3, weight_decay=0.1),
                     optax.masked(optax.set_to_zero(), method.frozen(model, params)))
    state = loop.TrainState.create(params, tx, method.init_extra(model, params))
    step = jax.jit(steps.pretrain_step(method, model, tx, 1, leads, total_steps=4))
    rows = _rows("moco_v3", 8, model.seq_len)
    new, metrics = step(state, rows["view1"], rows["view2"], jax.random.key(1))
    assert np.isfinite(float(metrics["loss"]))
    before, after = state.params["encoder"], new.params["encoder"]
    for a, b in zip(jax.tree.leaves(before["patch_embed"]), jax.tree.leaves(after["patch_embed"])):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before["blocks"]),
                                                        jax.tree.leaves(after["blocks"])))
    m = 1 - 0.01 * (1 + np.cos(np.pi * 1 / 4)) / 2
    for e0, p1, e1 in zip(jax.tree.leaves(state.extra["projector"]), jax.tree.leaves(new.params["projector"]),
                          jax.tree.leaves(new.extra["projector"])):
        np.testing.assert_allclose(e1, m * np.asarray(e0) + (1 - m) * np.asarray(p1), rtol=1e-5, atol=1e-7)
    # the exported encoder is MTAE's classifier encoder with the ViT's weights
    encoder, variables = method.encoder(model, {"params": new.params})
    assert models.model_config(encoder)["kind"] == "mtae_classifier"
    features = encoder.apply(variables, rows["view1"], leads=leads)
    assert features.shape == (8, 64)


def test_cmsc_refuses_pretraining_on_batches_of_one_patient(tmp_path):
    """Every pair of a one-patient batch is a positive: a constant loss, no gradient; the run stops
    at its first batch, before any step, naming why."""
    from stmem_jax.train import pretrain
    from stmem_jax.train.config import load_config
    from tests.data_fixtures import write_dataset

    method = methods.get("cmsc")
    method.check_batch({"patient": jnp.array([4, 4, 9, 4], jnp.int32)})  # a negative pair: fine
    data = write_dataset(tmp_path / "one", num_records=2, windows_per_record=8, tasks={},
                         splits={"train": 1.0}, recipe="authors")  # 16 windows of one patient
    config = load_config("cmsc", "tiny")
    for key, value in {**{f"model.{k}": v for k, v in SMALL.items() if k in ("width", "depth", "heads", "mlp_dim")},
                       "data.segment_samples": 600, "data.dir": data, "train.batch_size": 8, "train.num_steps": 2,
                       "eval.every_steps": 0, "log.figure_every_steps": 0, "checkpoint.asynchronous": False}.items():
        section, field = key.split(".")
        config[section][field] = value
    with pytest.raises(ValueError, match=r"every example of the first batch \(8\) is of one patient: CMSC contrasts "
                                         r"segments of different patients"):
        pretrain.train(config, str(tmp_path / "run"))
    assert not [s for s in os.listdir(tmp_path / "run" / "checkpoints") if s.isdigit()]
