"""The authors' optimisation recipe by default (spec ``recipe.md`` sections 3 and 4), and stmem-jax's
departures by name: one learning rate and weight decay on every trainable parameter, no drop path,
PyTorch's default initialisation, model selection on the crops' mean logits every epoch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from stmem_jax.metrics import logit_loss, loss as probability_loss
from stmem_jax.train import loop, setup
from stmem_jax.train.classification import crop_predictions, eval_interval, validation
from stmem_jax.train.config import (RECIPE_FIELDS, describe_fields, downstream, pretraining, resolve_recipe,
                                    check_values)

LEADS = tuple(range(12))


def first_updates(run):
    """The optimizer's first update of every leaf (a) for gradient 1 at parameters 0, whose Adam step is
    -lr x its multiplier, and (b) for gradient 0 at parameters 1: -lr x weight decay where it decays."""
    shapes = jax.eval_shape(run.init_state).params
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    ones = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
    update = jax.jit(lambda g, p: run.tx.update(g, run.tx.init(p), p)[0])
    return flatten_dict(update(ones, zeros)), flatten_dict(update(zeros, ones))


@pytest.mark.slow
def test_vit_b_fine_tuning_trains_every_parameter_at_one_rate_with_weight_decay_on_all_and_no_drop_path():
    """ViT-B's 12 blocks (narrowed to width 64: the optimizer's structure is the same): under the
    default (authors') recipe every parameter's update is the head's (no layer-wise decay) and every
    one is decayed at 0.05; stmem-jax's recipe scales blocks down and decays Dense kernels only."""
    config = downstream()
    config.model.update(preset="vit_base", width=64, heads=1, mlp_dim=128)
    config.train.update(lr=1e-3, warmup_steps=0, num_steps=10)
    for recipe in ("authors", "stmem_jax"):
        config.recipe = recipe
        resolved = resolve_recipe(config)
        model = setup.scratch_classifier(resolved, 5, LEADS)
        schedule = loop.Schedule.of(resolved.train, 8, 10)
        run = setup.build(config, LEADS, schedule, jax.devices(), classifier=model)
        steps, decays = first_updates(run)
        rates = {path: float(-np.mean(u)) / 1e-3 for path, u in steps.items()}
        decayed = {path: float(-np.mean(u)) / (1e-3 * 0.05) for path, u in decays.items()}
        assert model.depth == 12 and len(rates) > 150
        if recipe == "authors":
            assert model.drop_path == 0.0
            assert all(abs(r - 1) < 1e-3 for r in rates.values()), {p: r for p, r in rates.items() if abs(r - 1) > 1e-3}
            assert all(abs(d - 1) < 1e-3 for d in decayed.values())
        else:
            assert model.drop_path == 0.1
            assert min(rates.values()) == pytest.approx(0.75 ** 13, rel=1e-3)  # the embeddings
            assert {d > 0.5 for d in decayed.values()} == {True, False}


def test_pre_training_decays_every_parameter_at_0_01():
    config = pretraining("tiny", "st_mem")
    config.train.update(lr=1e-3, warmup_steps=0, num_steps=10)
    resolved = resolve_recipe(config)
    assert (resolved.train.weight_decay, resolved.train.weight_decay_on) == (0.01, "all")
    run = setup.build(config, LEADS, loop.Schedule.of(resolved.train, 8, 10), jax.devices())
    _, decays = first_updates(run)
    assert all(np.allclose(u, -1e-3 * 0.01, rtol=1e-3) for u in decays.values())


def init_params(kind, crop_samples=2250, **fields):
    config = downstream()
    config.model.update(preset="tiny", kind=kind, **fields)
    config.data.crop_samples = crop_samples
    resolved = resolve_recipe(config)
    model = setup.scratch_classifier(resolved, 5, LEADS)
    run = setup.build(config, LEADS, loop.Schedule.of(resolved.train, 8, 10), jax.devices(), classifier=model)
    return flatten_dict(jax.device_get(jax.jit(run.init_state)().params))


def test_a_scratch_encoder_and_its_head_start_from_pytorchs_defaults():
    """Every kernel and the bias beside it ~ U(+-1/sqrt(fan_in)) (std within 5%, never beyond the
    bound), LayerNorm 1 / 0, the learned tables N(0, 1) (spec section 4)."""
    params = init_params("st_mem")
    pools, tables = {}, []
    for path, leaf in params.items():
        if path[-1] == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            bias = params.get((*path[:-1], "bias"))
            for values in (leaf, bias) if bias is not None else (leaf,):
                assert np.abs(values).max() <= 1 / math.sqrt(fan_in)
                pools.setdefault(fan_in, []).append(values.ravel())
        elif "norm" in path[-2]:
            assert np.all(leaf == (1.0 if path[-1] == "scale" else 0.0)), path
        elif path[-1] in ("pos_embedding", "sep_embedding", "lead_embeddings"):
            tables.append(leaf.ravel())
    assert ("head", "kernel") in params and set(pools) == {75, 128, 512} and len(tables) == 3
    assert abs(np.concatenate(tables).std() - 1) < 0.05 and abs(np.concatenate(tables).mean()) < 0.05
    for fan_in, values in pools.items():
        assert abs(np.concatenate(values).std() * math.sqrt(3 * fan_in) - 1) < 0.05, fan_in


def test_pytorch_defaults_of_an_lstm_and_its_batchnorms():
    """CPC's classifier: its LSTM's weights U(+-1/sqrt(H)), each gate's bias the sum of two such draws
    (PyTorch's b_ih + b_hh); BatchNorm scale 1, offset 0, statistics 0 / 1."""
    params = init_params("cpc", crop_samples=300, width=64)
    lstm = {p: v for p, v in params.items() if "cell" in p}
    kernels = np.concatenate([v.ravel() for p, v in lstm.items() if p[-1] == "kernel"])
    biases = np.concatenate([v.ravel() for p, v in lstm.items() if p[-1] == "bias"])
    assert np.abs(kernels).max() <= 1 / 8 and abs(kernels.std() * math.sqrt(3 * 64) - 1) < 0.05
    assert np.abs(biases).max() <= 2 / 8 and abs(biases.std() * math.sqrt(3 * 64 / 2) - 1) < 0.1
    norms = {p: v for p, v in params.items() if "norm" in p[-2]}
    assert norms and all(np.all(v == {"scale": 1, "bias": 0, "mean": 0, "var": 1}[p[-1]]) for p, v in norms.items())


def test_model_selection_uses_the_crops_mean_logits_every_epoch():
    """Single- and multi-label: the validation loss is the cross-entropy of the crops' mean logits
    (``mean_probabilities``: of their mean probabilities); test metrics use the mean probabilities;
    validation runs every epoch however long the run."""
    logits = np.array([[[5.0, 0.0, -1.0], [0.0, 0.0, 0.0], [1.0, -2.0, 0.5]],
                       [[-1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [0.0, 1.0, 0.0]]], np.float32)
    config = downstream()
    for multilabel, labels in ((False, np.array([0, 2])), (True, np.array([[1, 0, 0], [0, 1, 1]], np.float32))):
        task = type("Task", (), {"multilabel": multilabel, "classes": ["a", "b", "c"]})
        predictions = crop_predictions({"outputs": logits, "label": labels}, multilabel)
        act = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)
        np.testing.assert_allclose(predictions["outputs"], np.mean(act, axis=1), rtol=1e-6)
        mean = logits.mean(axis=1).astype(np.float32)
        if multilabel:
            expected = float(optax.sigmoid_binary_cross_entropy(mean, labels).mean())
        else:
            expected = float(optax.softmax_cross_entropy_with_integer_labels(mean, labels).mean())
        for recipe, value in (("authors", expected),
                              ("stmem_jax", probability_loss(labels, predictions["outputs"], multilabel))):
            config.recipe = recipe
            config.eval.selection_loss = None
            assert validation(resolve_recipe(config), task, predictions)["loss"] == pytest.approx(value, rel=1e-5)
        assert logit_loss(labels, mean, multilabel) == pytest.approx(expected, rel=1e-5)
        assert abs(expected - probability_loss(labels, predictions["outputs"], multilabel)) > 0.05
    schedule = loop.Schedule(total_steps=5000, steps_per_epoch=10, global_batch=8, learning_rate=optax.constant_schedule(0))
    assert eval_interval(resolve_recipe(downstream()), schedule) == 10
    config.recipe = "stmem_jax"
    assert eval_interval(resolve_recipe(config), schedule) == 100  # at most 50 times


def test_every_recipe_field_is_none_until_resolved_and_help_names_both_values():
    for config in (downstream(), pretraining("tiny", "mtae")):
        present = [f for f in RECIPE_FIELDS if f.split(".")[1] in config[f.split(".")[0]]]
        set_by_schema = [f for f in present if config[f.split(".")[0]][f.split(".")[1]] is not None]
        assert len(present) > 5 and set_by_schema == (["train.weight_decay"] if "mode" in config else [])
        resolved = resolve_recipe(config)
        check_values(resolved)
        assert all(resolved[f.split(".")[0]][f.split(".")[1]] == RECIPE_FIELDS[f][0]
                   for f in present if f not in set_by_schema)
    config = downstream()
    config.recipe, config.train.layer_decay = "stmem_jax", 0.9  # a field set stays as set
    resolved = resolve_recipe(config)
    assert (resolved.train.layer_decay, resolved.model.drop_path, resolved.data.filter) == (0.9, 0.1, "record")
    help_lines = "\n".join(describe_fields(downstream()))
    assert "--config.train.layer_decay" in help_lines and "authors 1.0, stmem_jax 0.75" in help_lines
    config.recipe = "ours"
    with pytest.raises(ValueError, match="recipe='ours': use authors or stmem_jax"):
        resolve_recipe(config)
    config.recipe, config.data.filter = "authors", "edges"
    with pytest.raises(ValueError, match=r"data.filter='edges' is not one of crop, window, record"):
        check_values(resolve_recipe(config))
