"""stmem-prepare throughput on synthetic PTB-XL-layout input (500 Hz, 10 s, 12 leads).

    python benchmarks/prepare.py [--records 2000] [--workers 1,2]

Generates the native files once (not timed), then times the whole preparation (listing, reading,
resampling to 250 Hz, band filter, windowing, serialising, writing shards and metadata) per
worker count and prints records/s. Target on a 2-core machine: at least 200 records/s.
"""

import argparse
import os
import tempfile
import time

from data_prep.sources import PTBXL
from data_prep.synthetic import write_ptbxl
from data_prep.writer import prepare
from stmem_jax.core.recipe import Recipe


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        native = os.path.join(tmp, "native")
        write_ptbxl(native, args.records, seed=0, workers=2, progress=False)
        print(f"{'workers':>7} {'records':>8} {'seconds':>8} {'records/s':>10}")
        for workers in (int(w) for w in args.workers.split(",")):
            out = os.path.join(tmp, f"out{workers}")
            start = time.perf_counter()
            manifest = prepare(PTBXL(native), out, Recipe(), workers=workers, shard_windows=500, progress=False)
            seconds = time.perf_counter() - start
            used = sum(s["records"] for s in manifest["splits"].values())
            print(f"{workers:>7} {used:>8} {seconds:>8.1f} {used / seconds:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
