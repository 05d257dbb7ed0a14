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


def rate(variant: str | None, examples: int, parallel: bool, repeats: int = 1, **settings) -> float:
    """Examples/s: the best of ``repeats`` passes over ``examples`` seeds (after a warm-up pass of 256)."""
    signal = np.random.default_rng(0).standard_normal((12, 2250)).astype(np.float32)

    def augment(i):
        x = tf.constant(signal) * (1.0 + tf.cast(i % 7, tf.float32))  # an example that varies with i
        seed = tf.stack([i, tf.constant(0, tf.int64)])
        return x if variant is None else rand_augment(x, seed, variant=variant, **settings)

    def run(n):
        ds = tf.data.Dataset.range(n)
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True) if parallel else ds.map(augment)
        ds = ds.batch(256).prefetch(2)
        start = time.perf_counter()
        for _ in ds:
            pass
        return time.perf_counter() - start

    run(256)
    return examples / min(run(examples) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3, help="passes per cell; the fastest is printed")
    parser.add_argument("--level", type=int, default=10)
    parser.add_argument("--num-ops", type=int, default=2)
    parser.add_argument("--prob", type=float, default=0.5)
    args = parser.parse_args()
    settings = dict(level=args.level, num_ops=args.num_ops, prob=args.prob)
    print(f"{os.cpu_count()} CPUs; {args.examples} examples of (12, 2250), best of {args.repeats}; level {args.level}, "
          f"{args.num_ops} ops, p {args.prob}")
    print(f"\n{'variant':12s} {'sequential ex/s':>16s} {'parallel ex/s':>14s}")
    for variant in (None, *VARIANTS):
        rates = [rate(variant, args.examples, parallel, args.repeats, **settings) for parallel in (False, True)]
        print(f"{variant or 'none':12s} {rates[0]:16.0f} {rates[1]:14.0f}")


if __name__ == "__main__":
    main()
