"""``stmem-prepare``: a native ECG dataset -> TFRecord shards + manifest.json.

Exit status: 0 when every record was used, 3 when the run finished but skipped records
(listed in manifest.json with their reasons), 1 on an error, 2 on a usage error, 128 + the signal
number when stopped by SIGTERM or Ctrl-C (the same command resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import signal
import sys

from data_prep.sources import SOURCES
from data_prep.writer import PrepareError, prepare
from stmem_jax.core import fileio
from stmem_jax.core.recipe import FLAT_LEADS, RECIPES, RESAMPLING, Recipe
from stmem_jax.core.signal import EXIT_SKIPPED


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stmem-prepare", description=__doc__.splitlines()[0])
    p.add_argument("source", choices=sorted(SOURCES) + ["synthetic"], help="dataset kind")
    p.add_argument("--input", help="the dataset's root folder as downloaded (synthetic: where to write the "
                                   "generated PTB-XL layout, default OUTPUT-native)")
    p.add_argument("--output", required=True, help="folder for shards and manifest.json")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="authors",
                   help="authors (default): each native 10 s window FFT-resampled, not filtered (the pipeline filters "
                        "each crop), records with a flat lead kept, as the ST-MEM authors' code; stmem_jax: the record "
                        "resampled (polyphase) and band-filtered whole, records with a flat lead dropped")
    p.add_argument("--resample", choices=RESAMPLING, help="fft: each native window (scipy.signal.resample); polyphase: "
                                                          "the whole record (default: the recipe's)")
    p.add_argument("--filter", action=argparse.BooleanOptionalAction, default=None,
                   help="band-filter at preparation, or not (then the pipeline filters: each crop under the authors' "
                        "recipe); default: the recipe's (authors: no, stmem_jax: yes)")
    p.add_argument("--flat-leads", choices=FLAT_LEADS, help="keep or drop records with a flat lead (default: the recipe's)")
    p.add_argument("--fs", type=int, default=Recipe.fs, help="target sampling rate (Hz)")
    p.add_argument("--window-s", type=float, default=Recipe.window_s, help="window length (s)")
    p.add_argument("--highpass", type=float, default=Recipe.highpass_hz, help="high-pass cut-off (Hz)")
    p.add_argument("--lowpass", type=float, default=Recipe.lowpass_hz, help="low-pass cut-off (Hz)")
    p.add_argument("--filter-order", type=int, default=Recipe.filter_order, help="Butterworth order of each side")
    p.add_argument("--max-gap-s", type=float, default=Recipe.max_gap_s,
                   help="interpolate gaps of missing samples up to this long (s); windows with longer gaps are dropped")
    p.add_argument("--seed", type=int, default=0, help="seed of the 70/10/20 patient split")
    p.add_argument("--shard-windows", type=int, default=2000, help="windows per shard (2000 x 12 leads ~ 120 MB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--strict", action="store_true", help="stop at the first unusable record")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = p.add_argument_group("source options")
    g.add_argument("--split-scheme", choices=("st_mem", "benchmark"), default="st_mem",
                   help="ptbxl: strat_folds 1-7/8/9-10 (ST-MEM) or 1-8/9/10 (benchmark)")
    g.add_argument("--resolution", choices=("hr", "lr"), default="hr", help="ptbxl: records500 or records100")
    g.add_argument("--subsets", help="challenge2021: comma-separated sub-folders (default: all present)")
    g.add_argument("--split-mode", choices=("auto", "train", "split"), default="auto",
                   help="challenge2021: auto puts Chapman-Shaoxing and Ningbo in train and splits the rest")
    g.add_argument("--labels", help="wfdb: CSV with columns record,label; files: CSV with columns file,label and "
                                    "optionally patient (labels separated by ';')")
    g.add_argument("--pattern", help="files: only files whose name or relative path matches this glob (e.g. '*.xml')")
    g.add_argument("--records", type=int, default=2000, help="synthetic: number of records")
    return p


def _stop(signum, frame):
    """SIGTERM / Ctrl-C: the workers are stopped and the run exits at once. Finished shards are
    kept (each was written under a temporary name, then renamed), so the same command resumes."""
    for child in multiprocessing.active_children():
        child.terminate()
    print(f"\nstmem-prepare: stopped by signal {signum}; run the same command again to resume", file=sys.stderr,
          flush=True)
    os._exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(argv)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    try:
        manifest = _prepare(args)
    except (PrepareError, ValueError) as error:
        return _error(error)
    except OSError as error:  # a read-only or full disk, a missing file or bucket: the message names it
        return _error(f"{error.filename}: {error.strerror}" if error.filename else error)
    for split, info in manifest["splits"].items():
        print(f"{split:>10}: {info['examples']} windows from {info['records']} records in "
              f"{len(info['shard_lengths'])} shard(s), {info['bytes'] / 1e6:.1f} MB")
    print(f"storage error: max {manifest['storage']['max_abs_error_uv']:.3f} uV, "
          f"rms {manifest['storage']['rms_error_uv']:.3f} uV")
    print(f"skipped records: {manifest['skipped_count']} (reasons in {fileio.join(args.output, 'manifest.json')})")
    return EXIT_SKIPPED if manifest["skipped_count"] else 0


def _error(message) -> int:
    """A user error: one line, exit status 1."""
    print(f"stmem-prepare: error: {message}", file=sys.stderr)
    return 1


def _prepare(args: argparse.Namespace) -> dict:
    """The run the arguments ask for; its manifest."""
    base = RECIPES[args.recipe]
    prefilter = base.prefiltered if args.filter is None else args.filter
    recipe = dataclasses.replace(
        base, fs=args.fs, window_s=args.window_s, filter_order=args.filter_order, max_gap_s=args.max_gap_s,
        highpass_hz=args.highpass, lowpass_hz=args.lowpass, resample=args.resample or base.resample,
        flat_leads=args.flat_leads or base.flat_leads,
        filter_on="record" if prefilter else base.filter_on if base.filter_on != "record" else "crop")
    name = args.source
    input_dir = args.input
    if name == "synthetic":
        from data_prep.synthetic import write_ptbxl

        input_dir = input_dir or args.output.rstrip("/") + "-native"
        write_ptbxl(input_dir, args.records, seed=args.seed, workers=args.workers, progress=not args.quiet,
                    overwrite=args.overwrite)
        name = "ptbxl"
    if not input_dir or not fileio.isdir(input_dir):
        raise PrepareError(f"{input_dir}: the input folder does not exist")
    options = {"split_scheme": args.split_scheme, "resolution": args.resolution} if name == "ptbxl" else \
        {"subsets": args.subsets.split(",") if args.subsets else None, "split_mode": args.split_mode} \
        if name == "challenge2021" else {"labels": args.labels} if name == "wfdb" else \
        {"labels": args.labels, "pattern": args.pattern} if name == "files" else {}
    source = SOURCES[name](input_dir, options)
    source.workers, source.progress = args.workers, not args.quiet
    return prepare(source, args.output, recipe, workers=args.workers, overwrite=args.overwrite, strict=args.strict,
                   seed=args.seed, shard_windows=args.shard_windows, progress=not args.quiet, args=vars(args))
