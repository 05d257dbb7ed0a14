"""Input-pipeline throughput on this machine, on a synthetic dataset written to a temp dir.

    python benchmarks/input_pipeline.py [--windows 2000] [--batch-size 256] [--batches 30]

Prints examples/s of the pre-training path (random crop + z-score), the same over a mixture of the
dataset split into three folders (target: within 10% of one folder), the fine-tuning path of the
authors' recipe (labels, each crop band-filtered after cropping, RandAugment; target 2,000/s) and
without the filter (shards filtered at preparation, stmem-jax's recipe), the 3-crop evaluation path
with each crop filtered, the band filter of the stored window, the contrastive methods' two views
(two crops, each augmented) and two segments with the patient, and windows resampled to 100 Hz
(CPC), and the time to the first batch when a training pipeline is positioned at step 0, mid-epoch
and at a late step. The dataset is written unfiltered, as the authors' recipe prepares it.

    python benchmarks/input_pipeline.py --bucket [--windows 2000]

reads the same dataset from a bucket of a GCS-API server started on localhost (fake-gcs-server, the
dev extra), through STORAGE_EMULATOR_HOST, and prints each path's examples/s from the bucket against
local disk (target: the bucket at no less than 80% of local).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from stmem_jax.data.pipeline import InputConfig, make_dataset, steps_per_epoch  # noqa: E402
from tests.data_fixtures import write_dataset  # noqa: E402


def throughput(config: InputConfig, batches: int) -> float:
    """Examples/s over ``batches`` batches after two warm-up batches."""
    it = make_dataset(config, process_index=0, process_count=1).as_numpy_iterator()
    for _ in range(2):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    return batches * len(batch["record_id"]) / (time.perf_counter() - start)


def first_batch_seconds(config: InputConfig, step: int) -> float:
    start = time.perf_counter()
    next(make_dataset(config, process_index=0, process_count=1, start_step=step).as_numpy_iterator())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--bucket", action="store_true", help="compare reading from a local GCS-API server")
    args = parser.parse_args()
    if args.bucket:
        return compare_bucket(args)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data = write_dataset(os.path.join(tmp, "ecg"), num_records=args.windows, splits={"train": 1.0},
                             shards_per_split=8, filtered=False)
        thirds = [write_dataset(os.path.join(tmp, f"part{i}"), num_records=args.windows // 3, splits={"train": 1.0},
                                shards_per_split=3, filtered=False, seed=i) for i in range(3)]
        print(f"wrote {args.windows} windows twice in {time.perf_counter() - start:.1f} s; {os.cpu_count()} CPUs")
        pretrain = InputConfig(data, batch_size=args.batch_size)
        finetune = dataclasses.replace(pretrain, task="rhythm", augment=True, filter="crop")
        rows = [
            ("pre-training: crop + z-score", pretrain, 5000),
            ("pre-training, 3 folders mixed", dataclasses.replace(pretrain, data_dir=",".join(thirds)), None),
            ("fine-tuning: + labels + crop filter + RandAugment", finetune, 2000),
            ("fine-tuning without the crop filter", dataclasses.replace(finetune, filter=""), None),
            ("evaluation: 3 crops, each filtered + z-score", dataclasses.replace(finetune, training=False), None),
            ("pre-training + band filter of the window", dataclasses.replace(pretrain, filter="window"), None),
            ("two views, each + RandAugment (MoCo v3)", dataclasses.replace(
                pretrain, views=("view1", "view2"), augment=True), 5000),
            ("two adjacent segments + patient (CMSC)", dataclasses.replace(
                pretrain, views=("segment1", "segment2", "patient")), 5000),
            ("resampled to 100 Hz, 1000-sample crop (CPC)", dataclasses.replace(
                pretrain, sample_rate=100, crop_samples=1000), None),
        ]
        print(f"\n{'path':50s} {'examples/s':>11s} {'target':>8s}")
        for name, config, target in rows:
            batches = args.batches if config.training else steps_per_epoch(config, process_count=1) - 2
            rate = throughput(config, batches)
            print(f"{name:50s} {rate:11.0f} {('>= ' + str(target)) if target else '':>8s}")
        steps = steps_per_epoch(pretrain, process_count=1)
        print(f"\npositioning a pre-training pipeline ({steps} steps/epoch): time to the first batch")
        for step in (0, steps - 1, 1_000_000 * steps + steps - 1):
            print(f"  start_step={step:<14d} {first_batch_seconds(pretrain, step):6.2f} s")


def compare_bucket(args) -> None:
    from stmem_jax.core import fileio
    from tests.gcs_server import GCSServer

    server = GCSServer().start()
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = write_dataset(os.path.join(tmp, "ecg"), num_records=args.windows, splits={"train": 1.0},
                                  shards_per_split=8, filtered=False)
            remote = server.create_bucket("bench") + "/ecg"
            for name in fileio.listdir(local):
                fileio.write_bytes(fileio.join(remote, name), fileio.read_bytes(os.path.join(local, name)))
            pretrain = InputConfig(local, batch_size=args.batch_size)
            rows = [("pre-training: crop + z-score", pretrain),
                    ("fine-tuning: + labels + RandAugment", dataclasses.replace(pretrain, task="rhythm", augment=True))]
            print(f"{args.windows} windows in 8 shards; {os.cpu_count()} CPUs; server {server.url}")
            print(f"\n{'path':40s} {'local ex/s':>11s} {'bucket ex/s':>12s} {'ratio':>6s}")
            for name, config in rows:
                near = throughput(config, args.batches)
                far = throughput(dataclasses.replace(config, data_dir=remote), args.batches)
                print(f"{name:40s} {near:11.0f} {far:12.0f} {far / near:6.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
