"""The preparation run: plan shards, process records in worker processes, write shards
atomically, resume, and assemble the manifest and TFDS metadata."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import warnings
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from tqdm import tqdm

from data_prep.records import Record, Skip
from data_prep.sources.base import Source
from data_prep.splits import SPLITS, assign_splits
from stmem_jax import __version__
from stmem_jax.core import fingerprint
from stmem_jax.core import shards as fmt
from stmem_jax.core import fileio
from stmem_jax.core.fileio import TEMPORARY
from stmem_jax.core.recipe import Recipe, make_windows
from stmem_jax.core.signal import RecordError

PROGRESS_DIR = ".progress"
PLAN_FILE = "plan.json"
_OWN_FILE = re.compile(r"^((train|validation|test)-\d{5}-of-\d{5}|manifest\.json|dataset_info\.json|features\.json|"
                       rf"fingerprints\.npz|\.progress)({TEMPORARY})?$")


class PrepareError(Exception):
    """The run cannot go on (strict mode, unusable output folder); the message names the file."""


class NothingUsable(PrepareError):
    """Every record was unusable: no example to write."""


@dataclasses.dataclass
class Job:
    split: str
    index: int
    count: int
    records: list[Record]

    @property
    def name(self) -> str:
        return fmt.shard_name(self.split, self.index, self.count)


def plan_shards(records: list[Record], recipe: Recipe, shard_windows: int) -> list[Job]:
    """Records grouped by split into shards of about ``shard_windows`` windows each."""
    jobs = []
    for split in SPLITS:
        members = [r for r in records if r.split == split]
        groups, current, size = [], [], 0.0
        for record in members:
            windows = max(1.0, (record.duration_s or recipe.window_s) // recipe.window_s)
            if current and size + windows > shard_windows:
                groups.append(current)
                current, size = [], 0.0
            current.append(record)
            size += windows
        if current:
            groups.append(current)
        jobs += [Job(split, i, len(groups), group) for i, group in enumerate(groups)]
    return jobs


def input_digest(source: Source, records: list[Record]) -> dict[str, Any]:
    """Sizes of every signal file (as a digest) and checksums of the index files."""
    sizes = hashlib.sha256()
    found = fileio.sizes({r.path[:-4] + ext if r.path.endswith(".hea") else r.path
                          for r in records for ext in (".hea", ".dat", ".mat")})
    total, files = 0, sorted({f for r in records for f in _signal_files(r.path, found)})
    for path in files:
        size = found.get(path, -1)
        total += max(size, 0)
        sizes.update(f"{source.relpath(path)}\t{size}\n".encode())
    index = {}
    for path in source.index_files():
        content = fileio.read_bytes(path)
        index[source.relpath(path)] = {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}
    return {"root": source.input_dir, "signal_files": len(files), "signal_bytes": total,
            "signal_sizes_sha256": sizes.hexdigest(), "index_files": index}


def _signal_files(path: str, found: dict[str, int]) -> list[str]:
    """The files a record is read from: a WFDB header with its .dat/.mat (those in ``found``), or
    the file itself."""
    if not path.endswith(".hea"):
        return [path]
    return [path] + [p for p in (path[:-4] + ".dat", path[:-4] + ".mat") if p in found]


@contextlib.contextmanager
def _lock(output: str):
    """Holds ``.<name>.stmem-prepare.lock`` in the output's real parent (links resolved: two paths to
    one folder share the lock) while the run lasts, so that a second run on the same output fails at
    once (the lock dies with its process: no stale lock). A bucket has no file locks: an output there
    is not locked (run one preparation per output)."""
    if fileio.is_url(output):
        yield
        return
    parent, name = os.path.split(os.path.realpath(output))
    os.makedirs(parent, exist_ok=True)
    path = os.path.join(parent, f".{name}.stmem-prepare.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise PrepareError(f"{path}: another stmem-prepare (pid {holder or '?'}) is writing {output}") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the run that held it removed it meanwhile: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(fd)


def _sibling(output: str, role: str) -> str:
    parent, name = fileio.split(output)
    return fileio.join(parent, f".{name}.stmem-prepare-{role}")


def _check_own(folder: str) -> None:
    if fileio.isfile(folder):
        raise PrepareError(f"{folder} is a file; --output names the folder to write the shards to")
    foreign = [e for e in fileio.listdir(folder) if not _OWN_FILE.match(e)] if fileio.isdir(folder) else []
    if foreign:
        raise PrepareError(f"{folder} is not empty and not a preparation output (found {foreign[0]!r})")


def _work_folder(output: str, overwrite: bool) -> str:
    """The folder the run writes: ``output``, or, when ``output`` holds a finished dataset that
    ``overwrite`` replaces, a sibling swapped in once the new dataset is complete (the old one is
    kept until then)."""
    _check_own(output)
    if not fileio.exists(fileio.join(output, fmt.MANIFEST)):
        return output
    if not overwrite:
        raise PrepareError(f"{output} already holds a prepared dataset; pass --overwrite to replace it")
    staging = _sibling(output, "new")
    _check_own(staging)
    return staging


def _clear(folder: str) -> None:
    """Removes this tool's files from ``folder`` (``_check_own`` has found no others)."""
    for entry in fileio.listdir(folder):
        path = fileio.join(folder, entry)
        fileio.rmtree(path) if fileio.isdir(path) else fileio.remove(path)


def _swap(staging: str, output: str) -> None:
    """Puts the finished ``staging`` folder in the place of ``output``, then deletes the old dataset.
    In a bucket, where a folder's move copies it: the old manifest goes first (the folder is no
    dataset until the new one is complete), then the new files, the manifest last."""
    if fileio.is_url(output):
        fileio.remove(fileio.join(output, fmt.MANIFEST))
        _clear(output)
        for name in sorted(fileio.listdir(staging), key=lambda n: n == fmt.MANIFEST):
            fileio.rename(fileio.join(staging, name), fileio.join(output, name))
        return
    old = _sibling(output, "old")
    if os.path.exists(old):
        shutil.rmtree(old)
    os.rename(output, old)
    os.rename(staging, output)
    shutil.rmtree(old)


def _check_plan(output: str, plan: dict[str, Any]) -> None:
    """Starts a new plan, or resumes one only if it is the same plan."""
    path = fileio.join(output, PROGRESS_DIR, PLAN_FILE)
    if fileio.exists(path):
        with fileio.open(path) as f:
            if json.load(f)["fingerprint"] != plan["fingerprint"]:
                raise PrepareError(f"{output} holds an unfinished preparation with other inputs or settings; "
                                   f"pass --overwrite to start again")
        return
    _write_json(path, plan)


def _write_json(path: str, content: Any) -> None:
    with fileio.open(path, "w") as f:
        json.dump(content, f, indent=1, sort_keys=True, default=float)


def run_job(job: Job, source: Source, recipe: Recipe, output: str, tasks: list[str], strict: bool) -> dict:
    """Processes one shard's records and writes the shard. Returns its statistics."""
    classes: dict[str, Counter] = {task: Counter() for task in tasks}
    skipped: list[dict] = []
    notes: list[dict] = []
    error_max, error_sq, error_n, used = 0.0, 0.0, 0, 0
    prints: dict[str, list] = {"record_id": [], "patient_id": [], "window": [], "profile": []}

    def examples():
        nonlocal error_max, error_sq, error_n, used
        for record in job.records:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    signal = source.load(record)
                notes.extend({"record_id": record.record_id, "path": record.path, "warning": str(w.message)}
                             for w in caught if not issubclass(w.category, DeprecationWarning))
                windows, dropped = make_windows(signal, source.leads, recipe)
                if dropped:
                    skipped.append(Skip(record.record_id, record.path,
                                        f"{dropped} window(s) with NaN or infinite samples dropped").as_dict())
                if not windows:
                    raise RecordError("no window without NaN or infinite samples")
            except RecordError as error:
                if strict:
                    raise PrepareError(f"{record.path}: {error}") from error
                skipped.append(Skip(record.record_id, record.path, str(error)).as_dict())
                continue
            used += 1
            patient = record.patient_id or signal.patient_id or record.record_id
            for window, data in windows:
                example = fmt.make_example(
                    data, record_id=record.record_id, patient_id=patient, source=record.source,
                    split=job.split, window=window, age=record.age, sex=record.sex, fold=record.fold,
                    codes=record.codes, code_weights=record.code_weights,
                    labels={task: record.labels.get(task, []) for task in tasks})
                stored = fmt.dequantize(example["signal"], example["scale"])
                for key, value in (("record_id", record.record_id), ("patient_id", patient),
                                   ("window", window), ("profile", fingerprint.profile(stored, source.leads))):
                    prints[key].append(value)
                error = np.abs(stored - data)
                error_max = max(error_max, float(error.max()))
                error_sq += float(np.square(error, dtype=np.float64).sum())
                error_n += error.size
                for task in tasks:
                    classes[task].update(example["labels"][task])
                yield fmt.serialize_example(example)

    count, size = fmt.write_shard(fileio.join(output, job.name), examples())
    fingerprint.save(_fingerprint_file(output, job), {
        "split": np.full(count, job.split), "record_id": np.array(prints["record_id"], str),
        "patient_id": np.array(prints["patient_id"], str), "window": np.array(prints["window"], np.int32),
        "profile": np.array(prints["profile"], np.uint16).reshape(count, *fingerprint.SHAPE)})
    result = {"shard": job.name, "split": job.split, "examples": count, "bytes": size, "records": used,
              "skipped": skipped, "warnings": notes, "classes": {t: dict(c) for t, c in classes.items()},
              "error_max_mv": error_max, "error_sq_sum": error_sq, "error_n": error_n}
    _write_json(fileio.join(output, PROGRESS_DIR, job.name + ".json"), result)
    return result


def _fingerprint_file(output: str, job: Job) -> str:
    return fileio.join(output, PROGRESS_DIR, job.name + ".fingerprints.npz")


def _job_worker(args):
    return run_job(*args)


def _worker_start() -> None:
    """Pool initializer: on Linux the worker gets SIGTERM when the process that started it dies,
    however it dies (kill -9 included), so no worker writes on after the run has stopped; and its
    numerical libraries run one thread (the workers are the parallelism: with a BLAS thread pool
    in each, two workers on two cores ran 2.5 times slower than without)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the forked parent's handler: the pool's own stop is quiet


def worker_pool(workers: int):
    """A process pool of ``workers`` (see ``_worker_start``)."""
    # fork is cheap, but only safe while TensorFlow is not loaded in this process
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() and "tensorflow" not in sys.modules \
        else "spawn"
    return multiprocessing.get_context(method).Pool(workers, initializer=_worker_start)


def prepare(source: Source, output: str, recipe: Recipe, *, workers: int = 1, overwrite: bool = False,
            strict: bool = False, seed: int = 0, shard_windows: int = 2000, progress: bool = True,
            args: dict | None = None) -> dict[str, Any]:
    """Prepares ``source`` into ``output``; resumes an unfinished run of the same plan. One run per
    output at a time (a lock file beside it); an existing dataset is replaced (``overwrite``) only
    once the new one is complete. Returns the manifest."""
    output = fileio.absolute(output)
    with _lock(output):
        work = _work_folder(output, overwrite)
        records, listing_skips = source.list_records()
        if strict and listing_skips:
            raise PrepareError(f"{listing_skips[0].path}: {listing_skips[0].reason}")
        if not records:
            raise PrepareError(f"no usable records found in {source.input_dir}")
        created = not fileio.isdir(work)
        if overwrite and not created:
            _clear(work)
        fileio.makedirs(fileio.join(work, PROGRESS_DIR))
        try:
            manifest = _run(source, work, recipe, records, listing_skips, workers=workers, strict=strict, seed=seed,
                            shard_windows=shard_windows, progress=progress, args=args,
                            name=fileio.basename(output))
        except NothingUsable:
            _clear(work)
            if created or work != output:
                fileio.rmdir(work)
            raise
        if work != output:
            _swap(work, output)
    return manifest


def _run(source: Source, output: str, recipe: Recipe, records: list[Record], listing_skips: list[Skip], *,
         workers: int, strict: bool, seed: int, shard_windows: int, progress: bool, args: dict | None,
         name: str) -> dict[str, Any]:
    """Plans, writes (or resumes) the shards of ``records`` in ``output`` and finishes it."""
    if source.pretraining:
        for record in records:
            record.split = "train"
    assign_splits(records, source.split_task, seed)
    jobs = plan_shards(records, recipe, shard_windows)
    tasks = sorted(source.tasks)
    inputs = input_digest(source, records)
    settings = {"source": source.name, "options": source.options, "recipe": recipe.to_dict(),
                "seed": seed, "shard_windows": shard_windows, "tasks": tasks}
    fingerprint = hashlib.sha256(json.dumps(
        [settings, inputs, [(j.name, [r.record_id for r in j.records]) for j in jobs]],
        sort_keys=True, default=str).encode()).hexdigest()
    _check_plan(output, {"fingerprint": fingerprint, "settings": settings})

    present = set(fileio.listdir(output)) if fileio.isdir(output) else set()
    recorded = set(fileio.listdir(fileio.join(output, PROGRESS_DIR))) if PROGRESS_DIR in present else set()
    done = {j.name for j in jobs if j.name in present and j.name + ".json" in recorded}
    pending = [j for j in jobs if j.name not in done]
    bar = tqdm(total=len(records), initial=sum(len(j.records) for j in jobs if j.name in done),
               unit="rec", desc=f"{source.name} -> {len(jobs)} shards", disable=not progress)
    work = [(job, source, recipe, output, tasks, strict) for job in pending]
    if workers > 1 and len(pending) > 1:
        with worker_pool(min(workers, len(pending))) as pool:
            for result in pool.imap_unordered(_job_worker, work):
                bar.update(len(next(j for j in pending if j.name == result["shard"]).records))
    else:
        for item in work:
            run_job(*item)
            bar.update(len(item[0].records))
    bar.close()
    return _finish(output, source, recipe, jobs, tasks, listing_skips, inputs, settings, args, name)


def _finish(output, source, recipe, jobs, tasks, listing_skips, inputs, settings, args, name) -> dict[str, Any]:
    results = []
    for job in jobs:
        with fileio.open(fileio.join(output, PROGRESS_DIR, job.name + ".json")) as f:
            results.append(json.load(f))
    skipped = [s.as_dict() for s in listing_skips] + [s for r in results for s in r["skipped"]]
    if not sum(r["examples"] for r in results):
        first = next((s for s in skipped if "window(s)" not in s["reason"]), skipped[0])
        raise NothingUsable(f"{source.input_dir}: no record gave a window to store (the first of "
                            f"{len(skipped)} skipped: {first['path']}: {first['reason']})")
    splits: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        own = [r for r in results if r["split"] == split]
        if not own:
            continue
        classes: dict[str, Counter] = defaultdict(Counter)
        for r in own:
            for task, counts in r["classes"].items():
                classes[task].update(counts)
        splits[split] = {"examples": sum(r["examples"] for r in own), "records": sum(r["records"] for r in own),
                         "bytes": sum(r["bytes"] for r in own), "shard_lengths": [r["examples"] for r in own],
                         "classes": {t: dict(sorted(c.items())) for t, c in sorted(classes.items())}}
    prints = fingerprint.concatenate([fingerprint.load(_fingerprint_file(output, job)) for job in jobs])
    fingerprint.save(fileio.join(output, fingerprint.FILE), prints)
    error_n = sum(r["error_n"] for r in results)
    manifest = {
        "format_version": 1, "tool": f"stmem-prepare {__version__}", "source": source.name,
        "leads": list(source.leads), "recipe": recipe.to_dict(), "recipe_name": recipe.name, "sampling_rate": recipe.fs,
        "window_samples": recipe.window_samples, "window_s": recipe.window_s, "filter": recipe.filter_settings(),
        "tasks": {t: source.tasks[t] for t in tasks}, "splits": splits,
        "storage": {"dtype": "int16", "scale": "per example: max |x| -> 32767; mV = value * scale",
                    "max_abs_error_uv": 1000 * max((r["error_max_mv"] for r in results), default=0.0),
                    "rms_error_uv": 1000 * float(np.sqrt(sum(r["error_sq_sum"] for r in results) / max(error_n, 1)))},
        "fingerprints": fingerprint.summary(prints), "inputs": inputs, "settings": settings, "args": args or {},
        "skipped_count": len({s["record_id"] for s in skipped if "window(s)" not in s["reason"]}),
        "skipped": skipped, "warnings": [w for r in results for w in r.get("warnings", [])],
    }
    written = {s: info["shard_lengths"] for s, info in splits.items() if info["examples"]}
    if written:
        fmt.write_tfds_metadata(output, fmt.features_dict(len(source.leads), recipe.window_samples, tasks), written,
                                description=f"ECG windows prepared by stmem-prepare from {source.name}", name=name)
    _write_json(fileio.join(output, fmt.MANIFEST), manifest)
    fileio.rmtree(fileio.join(output, PROGRESS_DIR))
    for entry in fileio.listdir(output):  # partial files of workers killed in an earlier, interrupted run
        if re.search(TEMPORARY + "$", entry):
            fileio.remove(fileio.join(output, entry))
    return manifest
