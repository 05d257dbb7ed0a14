"""RandAugment alone: examples/s of ``rand_augment`` on (12, 2250) z-scored examples in a tf.data map,
per variant (the authors' ops, ours), beside the same map without augmentation.

    python benchmarks/augment_speed.py [--examples 20000] [--repeats 3] [--level 10] [--num-ops 2] [--prob 0.5]

Two maps: one call at a time (``sequential``) and tf.data's parallel map (``parallel``, as the input
pipeline runs it). The fine-tuning input must reach 2,000 examples/s with filtering and RandAugment
(``benchmarks/input_pipeline.py`` times the whole path).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from stmem_jax.data.augment import VARIANTS, rand_augment  # noqa: E402


def dataset(variant: str | None, examples: int, parallel: bool, **settings) -> tf.data.Dataset:
    """``examples`` examples (12, 2250) through ``rand_augment`` of ``variant`` (None: not augmented)."""
    signal = np.random.default_rng(0).standard_normal((12, 2250)).astype(np.float32)

    def augment(i):
        x = tf.constant(signal) * (1.0 + tf.cast(i % 7, tf.float32))  # an example that varies with i
        seed = tf.stack([i, tf.constant(0, tf.int64)])
        return x if variant is None else rand_augment(x, seed, variant=variant, **settings)

    ds = tf.data.Dataset.range(examples)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) if parallel else ds.map(augment)
    return ds.batch(256).prefetch(2)


def seconds(ds: tf.data.Dataset) -> float:
    start = time.perf_counter()
    for _ in ds:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3, help="passes per cell, interleaved; the fastest is printed")
    parser.add_argument("--level", type=int, default=10)
    parser.add_argument("--num-ops", type=int, default=2)
    parser.add_argument("--prob", type=float, default=0.5)
    args = parser.parse_args()
    settings = dict(level=args.level, num_ops=args.num_ops, prob=args.prob)
    print(f"{os.cpu_count()} CPUs; {args.examples} examples of (12, 2250), best of {args.repeats}; level {args.level}, "
          f"{args.num_ops} ops, p {args.prob}")
    cells = {(variant, parallel): dataset(variant, args.examples, parallel, **settings)
             for variant in (None, *VARIANTS) for parallel in (False, True)}
    for ds in cells.values():  # warm-up: trace and run once
        seconds(ds.take(2))
    best = {cell: seconds(ds) for cell, ds in cells.items()}
    for _ in range(args.repeats - 1):  # interleaved, so that a busy moment of the machine hits every cell
        best = {cell: min(best[cell], seconds(ds)) for cell, ds in cells.items()}
    print(f"\n{'variant':12s} {'sequential ex/s':>16s} {'parallel ex/s':>14s}")
    for variant in (None, *VARIANTS):
        rates = [args.examples / best[(variant, parallel)] for parallel in (False, True)]
        print(f"{variant or 'none':12s} {rates[0]:16.0f} {rates[1]:14.0f}")


if __name__ == "__main__":
    main()
