"""Linear probing on this machine: the authors' path against the cached-feature path, time per epoch.

    python benchmarks/linear_probe.py [--preset tiny|vit_base] [--examples 256] [--batch-size 64]

The authors' linear probe (``train.linprobe=frozen_encoder``, the default) trains the head in the
fine-tuning loop on random crops with RandAugment passed through the frozen encoder: every epoch
runs the encoder forward on one crop of every training example (no backward pass through it).
The cached path (``cached_features``, stmem-jax's) runs the encoder once on the 3 evaluation crops
of every example, then trains the head on those features. Prints, for a random ST-MEM encoder of
``--preset`` on ``--examples`` unfiltered synthetic windows: seconds per epoch of the frozen-encoder
path (after its compilation), seconds to cache the features (once, the encoder's compilation
excluded) and seconds per epoch of the head on them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from stmem_jax import mesh as meshlib  # noqa: E402
from stmem_jax.cli import use_compilation_cache  # noqa: E402
from stmem_jax.data.pipeline import global_batches, steps_per_epoch  # noqa: E402
from stmem_jax.data.tasks import resolve_task  # noqa: E402
from stmem_jax.train import downstream, linprobe, loop, setup  # noqa: E402
from stmem_jax.train.config import downstream as downstream_config, resolve_recipe  # noqa: E402
from stmem_jax.train.steps import classification_loss  # noqa: E402
from tests.data_fixtures import write_dataset  # noqa: E402


def frozen_encoder_epoch(config, task, model, encoder_params, mesh) -> float:
    """Seconds of one epoch of the authors' linear probe (steps after a compiled first one)."""
    train_input = task.input(config, "train", True, config.train.batch_size)
    steps = steps_per_epoch(train_input)
    schedule = loop.Schedule.of(config.train, config.train.batch_size, steps)
    run = setup.build(config, task.lead_ids, schedule, mesh.devices.flat, classifier=model, multilabel=False)
    state = jax.device_put(run.init_state(encoder_params), meshlib.replicated(mesh))
    step = jax.jit(run.step, donate_argnums=0)
    batches = global_batches(train_input, mesh, data_axis=meshlib.BATCH_AXES)
    batch = next(batches)
    state, metrics = step(state, batch["series"], batch["label"], run.key)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        state, metrics = step(state, batch["series"], batch["label"], run.key)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start


def cached_path(config, task, model, encoder_params, mesh, workdir) -> tuple[float, float]:
    """(seconds to cache the training split's features, seconds of one epoch of the head on them)."""
    encoder = model.clone(num_classes=0)
    config.data.feature_cache = os.path.join(workdir, "warm")  # compiles the encoder: not timed
    linprobe.cached_features(config, workdir, task, encoder, encoder_params, mesh, "train")
    config.data.feature_cache = os.path.join(workdir, "timed")
    start = time.perf_counter()
    features = linprobe.cached_features(config, workdir, task, encoder, encoder_params, mesh, "train")
    cache_seconds = time.perf_counter() - start
    x = jnp.asarray(features["outputs"].reshape(-1, features["outputs"].shape[-1]))
    y = jnp.asarray(features["label"]).repeat(features["outputs"].shape[1])
    head = model.init(jax.random.key(0), x[:1], method=lambda m, f: m.head(f))["params"]["head"]

    @jax.jit
    def step(head, xb, yb):  # the head's forward and backward pass (a plain update: Adam's is as small)
        loss, grads = jax.value_and_grad(lambda h: classification_loss(
            model.apply({"params": {"head": h}}, xb, method=lambda m, f: m.head(f)), yb, False))(head)
        return jax.tree.map(lambda p, g: p - 1e-3 * g, head, grads), loss

    batch = config.train.batch_size
    head, loss = step(head, x[:batch], y[:batch])
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(len(x) // batch):
        head, loss = step(head, x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch])
    jax.block_until_ready(loss)
    return cache_seconds, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("tiny", "vit_small", "vit_base"))
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    use_compilation_cache()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_dataset(os.path.join(tmp, "ecg"), num_records=args.examples, splits={"train": 1.0},
                             tasks={"rhythm": {"classes": ["AFIB", "SBRAD", "SR"], "multilabel": False}},
                             shards_per_split=4, recipe="authors")
        config = downstream_config()
        config.update(mode="linprobe", init="random:st_mem")
        config.model.preset = args.preset
        config.data.update(dir=data, task="rhythm")
        config.train.update(batch_size=args.batch_size, num_steps=1000)
        config.eval.batch_size = args.batch_size
        config = resolve_recipe(config)
        task = resolve_task(data, "rhythm", "12")
        mesh = meshlib.make_mesh()
        model, encoder_params = downstream.build_classifier(config, len(task.classes), task.lead_ids)
        frozen = frozen_encoder_epoch(config, task, model, encoder_params, mesh)
        cache, head = cached_path(config, task, model, encoder_params, mesh, tmp)
    print(f"linear probe, random ST-MEM {args.preset} encoder, {args.examples} examples, batch {args.batch_size}, "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"{'path':56s} {'seconds':>9s}")
    print(f"{'frozen encoder, augmented random crops: one epoch':56s} {frozen:9.2f}")
    print(f"{'cached features: caching the 3 evaluation crops (once)':56s} {cache:9.2f}")
    print(f"{'cached features: one epoch of the head':56s} {head:9.2f}")


if __name__ == "__main__":
    main()
