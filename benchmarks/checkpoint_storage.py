"""Checkpoint save and restore times, local disk against a bucket of a GCS-API server on localhost
(fake-gcs-server, the dev extra, reached through STORAGE_EMULATOR_HOST), for the training state
of a pre-training model (parameters and AdamW's two moments) through ``train.checkpoints``.

    python benchmarks/checkpoint_storage.py [--preset vit_base] [--repeats 2]
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
import numpy as np  # noqa: E402

from stmem_jax.models import create_model, init_variables  # noqa: E402
from stmem_jax.train.checkpoints import Checkpoints, abstract_with_shardings  # noqa: E402
from tests.gcs_server import GCSServer  # noqa: E402


def timed(workdir: str, state, repeats: int) -> tuple[float, float]:
    """(best save seconds, best restore seconds) over ``repeats`` steps."""
    saves, restores = [], []
    target = abstract_with_shardings(state, jax.tree.map(lambda x: x.sharding, state))
    with Checkpoints(workdir, keep=repeats, asynchronous=False) as checkpoints:
        for step in range(1, repeats + 1):
            start = time.perf_counter()
            checkpoints.save(step, state)
            checkpoints.wait()
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            restored = checkpoints.restore(step, target)
            jax.block_until_ready(restored)
            restores.append(time.perf_counter() - start)
    return min(saves), min(restores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_base")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    params = init_variables(create_model("st_mem", args.preset), jax.random.key(0))["params"]
    state = {"params": params, "mu": jax.tree.map(np.zeros_like, params), "nu": jax.tree.map(np.zeros_like, params)}
    state = jax.device_put(state)
    size = sum(x.nbytes for x in jax.tree.leaves(state))
    server = GCSServer().start()
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    try:
        bucket = server.create_bucket("bench")
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{args.preset} state: {size / 1e6:.0f} MB; {os.cpu_count()} CPUs; server {server.url}")
            print(f"{'where':10s} {'save s':>8s} {'restore s':>10s} {'save MB/s':>10s} {'restore MB/s':>13s}")
            for where, workdir in (("local", os.path.join(tmp, "run")), ("bucket", f"{bucket}/run")):
                save, restore = timed(workdir, state, args.repeats)
                print(f"{where:10s} {save:8.2f} {restore:10.2f} {size / 1e6 / save:10.0f} {size / 1e6 / restore:13.0f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
