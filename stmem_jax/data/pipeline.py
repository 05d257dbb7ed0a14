"""The tf.data input pipeline: per-host reads of a prepared split, transforms as TF ops, per-host
numpy batches, and global ``jax.Array`` batches sharded over a mesh's data axis.

Batches (per host, B = global batch / process count; C leads, T = crop_samples):
  series      training float32 (B, C, T); evaluation float32 (B, crops, C, T), the ``eval_crops``
              equally spaced crops, each z-scored on its own
  label       with a task: int32 (B,) class index (single-label) or float32 (B, K) multi-hot
  valid       evaluation only: bool (B,), False on padding
  record_id   bytes (B,) and window int32 (B,): host-side only (b"" and -1 on padding)
  source      int32 (B,), host-side: which of the folders read (``folders``) the example is from (-1: padding)

Views (``views``, what a pre-training method's ``inputs`` name; ``series`` alone by default):
  view1, view2        two crops of the window, each z-scored and (with ``augment``) augmented on its own
                      (MoCo v3); training: independent random crops, evaluation: the first and the
                      last of ``fixed_crops(2)``, not augmented; float32 (B, C, T)
  segment1, segment2  two adjacent segments of ``segment_samples`` each, z-scored on their own (CMSC):
                      a random (evaluation: centred) crop of twice that length cut in halves
  patient             int32 (B,): the example's patient (a hash of ``patient_id``; of the record id
                      when the shards hold none), for same-patient positives

Per example: int16 * scale -> lead selection -> optional resampling to ``sample_rate`` (full
window, ``core.recipe.resample`` by ``resample``'s method) -> band filter where ``filter`` says
(``window``: the window; ``crop``: each crop after cropping, the authors' recipe; ``record``: none,
the shards were filtered at preparation) -> crop(s) -> z-score -> RandAugment (training with
``augment``): the dataset's recipe (``manifest.json``, ``stmem_jax.core.recipe``; its NumPy
reference ``core.recipe.window_crops``) as TensorFlow ops, with the folder's band (the default band
when it records none). ``filter``, ``resample`` and ``flat_leads`` set are also what the folders
must have been prepared with: a folder prepared otherwise is an error naming it (empty: as the
folder was prepared, unchecked). Single-label tasks use only examples with
exactly one class (others are dropped, training and evaluation alike).

Several folders. ``data_dir`` may name several prepared folders (comma-separated or a tuple);
their manifests must agree on rate, window, filter and storage (``core.shards.read_manifests``).
Training reads the split from every folder; evaluation from the folders that have it, one after
the other. A training epoch is one pass over the union: ``steps_per_epoch`` counts the examples of
all folders, and each epoch draws from folder ``i`` exactly its share of the epoch's examples, by
``weights`` (default: proportional to the folders' example counts, i.e. each folder once), in an
order shuffled from ``(seed, epoch)``; a folder drawn more than once per epoch starts another
pass. A task's classes are the union of the folders' classes.

Order and randomness. Every example has a global index (its position in the folders' shards, in
folder and shard order). A process reads every ``process_count``-th shard, or, when there are fewer shards
than processes, every ``process_count``-th example. Training epoch ``e`` shuffles the shard order
and the examples with seeds derived from ``(seed, e)``; the example at position ``p`` of the epoch
gets its crop/augmentation seed from ``(seed, e, p)``. Every epoch has exactly
``steps_per_epoch`` batches (the minimum over processes; the rest of an epoch is dropped), so
``start_step`` is positioned by starting at epoch ``start_step // steps_per_epoch`` and skipping
the remaining whole batches of serialised records before any transform. Evaluation reads in a
fixed order (shards interleaved deterministically) and pads every process to the same number of
batches.

With a task, every process first reads the labels of the whole split (cached per process): they
give the label arrays, the usable examples and the label-fraction subset, so the examples per
process are known exactly. The shuffle buffer holds serialised examples (about 60 kB each for 12
leads x 2500 samples); a folder's share that fits in it whole (a label-fraction subset) is read
once, kept in memory and shuffled whole each pass.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import math
import queue
import threading
from collections.abc import Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
from jax.sharding import NamedSharding, PartitionSpec

from stmem_jax.core import fileio
from stmem_jax.core import shards as fmt
from stmem_jax.data import labels as labels_lib
from stmem_jax.data.augment import rand_augment
from stmem_jax.data.records import record_dataset
from stmem_jax.core.recipe import RECIPES, Recipe
from stmem_jax.data.transforms import band_filter, fixed_crops, random_crop, resample, split_segments, zscore
from stmem_jax.core.leads import LEAD_NAMES, lead_indices
from stmem_jax.core.views import VIEWS

try:  # the pipeline runs on the CPU; leave accelerators to JAX
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow was initialised already
    pass

DEVICE_KEYS = (*VIEWS, "label", "valid")  # global jax.Arrays in ``global_batches``; others stay numpy
_MAX_EPOCHS = 1 << 40


@dataclasses.dataclass(frozen=True)
class InputConfig:
    """What to read and how. ``batch_size`` is global; ``leads`` a set name (``"12"``, ``"limb"``,
    ``"1"``) or a sequence of lead names; ``label_fraction`` < 1 keeps a seeded, stratified subset
    of the split's records (needs a task); ``augment`` (RandAugment: ``augment_variant``'s ops,
    ``augment_list`` of them, empty: all) applies to training only; ``filter`` (crop | window |
    record), ``resample`` (fft | polyphase) and ``flat_leads`` (keep | drop): the recipe the input
    follows, checked against each folder's preparation (empty: the folder's, unchecked)."""

    data_dir: str | tuple[str, ...]
    split: str = "train"
    batch_size: int = 256
    training: bool = True
    leads: str | tuple = "12"
    crop_samples: int = Recipe.crop_samples
    task: str | None = None
    label_fraction: float = 1.0
    augment: bool = False
    augment_level: int = 10
    augment_ops: int = 2
    augment_prob: float = 0.5
    augment_variant: str = "authors"
    augment_list: tuple[str, ...] = ()
    filter: str = ""
    resample: str = ""
    flat_leads: str = ""
    seed: int = 0
    shuffle_buffer: int = 10_000
    eval_crops: int = Recipe.eval_crops
    weights: tuple[float, ...] | None = None
    exclude: frozenset[tuple[str, str, int]] = frozenset()  # (folder, record id, window) to leave out (needs a task)
    views: tuple[str, ...] = ("series",)  # the entries of ``VIEWS`` a batch holds
    segment_samples: int = 1200  # each of segment1 and segment2
    sample_rate: int = 0  # > 0: windows resampled to this rate before cropping; 0: the stored rate


@dataclasses.dataclass(frozen=True)
class _Split:
    """One folder's shards of a split (in shard order) and, with a task, each example's label and
    whether it is used; ``offset`` is the global index of its first example."""

    directory: str
    files: tuple[str, ...]
    lengths: tuple[int, ...]
    labels: np.ndarray | None
    usable: np.ndarray | None
    offset: int = 0

    def share(self, index: int, count: int) -> tuple[list[int], np.ndarray | None]:
        """(shards process ``index`` reads, mask over all examples of those it uses, or None for all)."""
        if len(self.files) >= count:
            return list(range(index, len(self.files), count)), self.usable
        mine = np.arange(sum(self.lengths)) % count == index
        return list(range(len(self.files))), mine if self.usable is None else mine & self.usable

    def count(self, index: int, count: int) -> int:
        files, mask = self.share(index, count)
        if mask is None:
            return sum(self.lengths[f] for f in files)
        starts = np.cumsum((0,) + self.lengths)
        return int(sum(mask[starts[f]:starts[f + 1]].sum() for f in files))


def lead_indices_for(config: InputConfig) -> tuple[int, ...]:
    """The lead-embedding indices (standard lead order) of the selected leads, for the model; errors
    when a folder lacks one of them."""
    for directory, manifest in fmt.read_manifests(config.data_dir).items():
        _lead_rows(config, manifest, directory)
    return lead_indices(config.leads)


def parse_weights(value: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """``data.weights``: empty (the union) or one weight per folder, comma-separated or a sequence."""
    if value is None or value == "" or value == ():
        return None
    try:
        return tuple(float(w) for w in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise ValueError(f"data.weights must be comma-separated numbers, got {value!r}") from None


def input_options(data) -> dict:
    """The fields of :class:`InputConfig` that a trainer config's resolved ``data`` section sets alike
    for every split: the recipe's (``filter``, ``resample``, ``flat_leads``) and RandAugment's."""
    ops = tuple(op.strip() for op in data.augment_list.split(",") if op.strip())
    return dict(filter=data.filter, resample=data.resample, flat_leads=data.flat_leads,
                augment_level=data.augment_level, augment_ops=data.augment_ops, augment_prob=data.augment_prob,
                augment_variant=data.augment_variant, augment_list=ops)


def folders(config: InputConfig) -> tuple[str, ...]:
    """The folders the split is read from, in order (the ``source`` index of a batch points here)."""
    return tuple(split.directory for split in _load(config)[1])


def mixture_names(config: InputConfig) -> tuple[str, ...]:
    """Short names of :func:`folders` for logs (base names, or the paths where two share one); empty
    for a single folder."""
    dirs = folders(config)
    names = tuple(fileio.basename(d) for d in dirs)
    return () if len(dirs) == 1 else names if len(set(names)) == len(names) else dirs


def task_classes(manifests: dict[str, dict], task: str) -> tuple[list[str], bool]:
    """(the union of the folders' classes of ``task``, sorted; whether it is multi-label)."""
    kinds = {}
    for directory, manifest in manifests.items():
        tasks = manifest.get("tasks") or {}
        if task not in tasks:
            raise ValueError(f"task {task!r} not in {directory} (it has: {', '.join(sorted(tasks)) or 'none'})")
        kinds[directory] = bool(tasks[task]["multilabel"])
    if len(set(kinds.values())) > 1:
        raise ValueError(f"task {task!r} is multi-label in some folders and single-label in others: {kinds}")
    classes = sorted({c for m in manifests.values() for c in m["tasks"][task]["classes"]})
    return classes, next(iter(kinds.values()))


def model_recipe(config: InputConfig) -> Recipe:
    """The recipe the model sees through this input: the prepared data's rate (or ``sample_rate``, the
    data's then its ``prepared_fs``), window and band filter (the default band when it records none
    and the input filters), where the input filters and how it resamples, and the config's crop
    length and evaluation crops. Raw ECGs go through it (``core.recipe.model_inputs``) to meet the
    model as trained."""
    return _input_recipe(config, Recipe.of_manifest(next(iter(fmt.read_manifests(config.data_dir).values()))))


def _input_recipe(config: InputConfig, stored: Recipe) -> Recipe:
    recipe = dataclasses.replace(stored, fs=config.sample_rate or stored.fs, crop_samples=config.crop_samples,
                                 eval_crops=config.eval_crops, filter_on=config.filter or stored.filter_on,
                                 resample=config.resample or stored.resample,
                                 prepared_fs=stored.fs if config.sample_rate not in (0, stored.fs) else 0)
    if recipe.filter_on != "record" and not recipe.filtered:
        recipe = recipe.with_band_of(Recipe())
    return recipe


def check_preparation(config: InputConfig, directory: str, manifest: dict) -> None:
    """A ValueError in one line naming ``directory`` when it was prepared otherwise than the input's
    ``filter``, ``resample`` and ``flat_leads`` expect (those set), with the two ways out."""
    stored = Recipe.of_manifest(manifest)
    kept = {"keep": "kept", "drop": "dropped"}
    wrong = []  # (field, what the folder holds, what the input expects)
    if config.filter and (config.filter == "record") != stored.prefiltered:
        wrong.append(("data.filter", *(("a band filter" if f else "no filter") + " at preparation"
                                       for f in (stored.prefiltered, config.filter == "record"))))
    if config.resample and config.resample != stored.resample:
        wrong.append(("data.resample", f"{stored.resample} resampling", f"{config.resample} resampling"))
    if config.flat_leads and config.flat_leads != stored.flat_leads:
        wrong.append(("data.flat_leads", f"flat-lead records {kept[stored.flat_leads]}",
                      f"flat-lead records {kept[config.flat_leads]}"))
    if not wrong:
        return

    def fits(recipe: Recipe) -> bool:  # a preparation the input accepts
        return (not config.filter or (config.filter == "record") == recipe.prefiltered) and \
            config.resample in ("", recipe.resample) and config.flat_leads in ("", recipe.flat_leads)

    expected = next((name for name, recipe in RECIPES.items() if fits(recipe)), None)
    redo = f"`stmem-prepare --recipe {expected}`" if expected else "stmem-prepare's --resample/--filter/--flat-leads"
    folder = {"data.filter": "record" if stored.prefiltered else "crop", "data.resample": stored.resample,
              "data.flat_leads": stored.flat_leads}  # the settings that read the folder as it is
    run = " ".join(f"--config.{f}={folder[f]}" for f, *_ in wrong) + \
        (f" (--config.recipe={stored.name} sets each one not set otherwise)" if stored.name != "custom" else "")
    raise ValueError(f"{directory} was prepared with {', '.join(h for _, h, _ in wrong)} (recipe {stored.name}), "
                     f"but this run's recipe expects {', '.join(w for *_, w in wrong)} "
                     f"({', '.join(f for f, *_ in wrong)}): prepare it again with {redo}, or run with {run}")


def steps_per_epoch(config: InputConfig, *, process_count: int | None = None) -> int:
    """Batches per epoch: training, full batches every process has; evaluation, all batches."""
    _, splits = _load(config)
    return _steps(config, splits, _process_count(process_count))


def make_dataset(config: InputConfig, *, process_index: int | None = None, process_count: int | None = None,
                 start_step: int = 0) -> tf.data.Dataset:
    """This process's batches (dicts of tensors; iterate with ``as_numpy_iterator``), training from
    ``start_step`` on, infinitely; evaluation once."""
    count = _process_count(process_count)
    index = _process_index(process_index)
    manifests, splits = _load(config)
    batch = _host_batch(config, count)
    steps = _steps(config, splits, count)
    shares = [split.share(index, count) for split in splits]
    transform = _transform(config, manifests, splits)
    if config.training:
        start_epoch, skip_steps = divmod(start_step, steps)
        draws = _draws(config, splits, steps * batch)
        sizes = [split.count(index, count) for split in splits]
        for split, drawn, size in zip(splits, draws, sizes):
            if drawn and not size:
                raise ValueError(f"process {index} has no examples of split {config.split!r} of {split.directory}")
        buffers = [max(1, math.ceil(config.shuffle_buffer * drawn / (steps * batch))) for drawn in draws]
        # a share the shuffle buffer holds whole (a label-fraction subset) is read once and kept in
        # memory: else every pass would read and filter the whole split for it
        kept = [_read(split, tf.constant(files, tf.int64), mask).cache() if 0 < size <= buffer else None
                for split, (files, mask), size, buffer in zip(splits, shares, sizes, buffers)]

        @tf.autograph.experimental.do_not_convert
        def epoch(e):
            file_key, shuffle_key, element_key, choice_key = tf.unstack(
                tf.random.experimental.stateless_split(tf.stack([tf.constant(config.seed, tf.int64), e]), 4))

            def stream(i):  # folder i's examples for this epoch: its draws, in as many passes as they take
                split, (files, mask) = splits[i], shares[i]

                def one_pass(r):
                    fold = functools.partial(_fold, i=i, r=r)
                    seed = tf.random.stateless_uniform([], fold(shuffle_key), None, None, dtype=tf.int64)
                    if kept[i] is not None:
                        return kept[i].shuffle(sizes[i], seed=seed)
                    order = tf.random.experimental.stateless_shuffle(tf.constant(files, tf.int64), fold(file_key))
                    return _read(split, order, mask).shuffle(buffers[i], seed=seed)

                return tf.data.Dataset.range(-(-draws[i] // sizes[i]) if draws[i] else 0).flat_map(
                    one_pass).take(draws[i])

            if len(splits) == 1:
                ds = stream(0)
            else:
                choice = tf.random.experimental.stateless_shuffle(
                    tf.repeat(tf.range(len(splits), dtype=tf.int64), draws), choice_key)
                ds = tf.data.Dataset.choose_from_datasets([stream(i) for i in range(len(splits))],
                                                          tf.data.Dataset.from_tensor_slices(choice))
            ds = ds.enumerate().skip(tf.where(e == start_epoch, tf.constant(skip_steps * batch, tf.int64), 0))
            return ds.map(lambda p, item: (tf.random.experimental.stateless_fold_in(element_key, p), *item))

        ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch)
        ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)
    else:
        if start_step:
            raise ValueError("start_step applies to training pipelines only")
        ds = _read(splits[0], tf.constant(shares[0][0], tf.int64), shares[0][1])
        for split, (files, mask) in zip(splits[1:], shares[1:]):
            ds = ds.concatenate(_read(split, tf.constant(files, tf.int64), mask))
        ds = ds.map(lambda g, s: transform(None, g, s), num_parallel_calls=tf.data.AUTOTUNE)
        padding = steps * batch - sum(split.count(index, count) for split in splits)
        blank = tf.nest.map_structure(lambda spec: tf.zeros(spec.shape, spec.dtype), ds.element_spec)
        blank.update(valid=tf.constant(False), window=tf.constant(-1), source=tf.constant(-1))
        ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(padding)).batch(batch)
    options = tf.data.Options()
    options.deterministic = True
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _fold(key: tf.Tensor, i: int, r: tf.Tensor) -> tf.Tensor:
    """The key of pass ``r`` over folder ``i``."""
    return tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(key, i), r)


def _draws(config: InputConfig, splits: list[_Split], total: int) -> list[int]:
    """Examples drawn from each folder per epoch (of ``total``): ``weights`` (default: the folders'
    example counts) by largest remainder."""
    counts = [split.count(0, 1) for split in splits]
    weights = counts if config.weights is None else list(config.weights)
    if len(weights) != len(splits) or any(not math.isfinite(w) or w < 0 for w in weights) or not sum(weights):
        raise ValueError(f"data.weights {config.weights} must give one non-negative weight per folder "
                         f"({len(splits)}), not all zero")
    exact = [total * w / sum(weights) for w in weights]
    draws = [math.floor(x) for x in exact]
    for i in sorted(range(len(draws)), key=lambda i: draws[i] - exact[i])[:total - sum(draws)]:
        draws[i] += 1
    return draws


def global_batches(config: InputConfig, mesh, *, data_axis: str | tuple[str, ...] = "data", start_step: int = 0,
                   prefetch: int = 2) -> Iterator[dict]:
    """Batches with ``DEVICE_KEYS`` as global jax.Arrays sharded over ``mesh``'s ``data_axis`` (the
    rest, e.g. ``record_id``, stay this host's numpy arrays), converted ``prefetch`` batches ahead
    in a background thread. An unreadable shard raises a ValueError that names it."""
    axes = (data_axis,) if isinstance(data_axis, str) else tuple(data_axis)
    devices = int(np.prod([mesh.shape[a] for a in axes]))
    if config.batch_size % devices:
        raise ValueError(f"global batch size {config.batch_size} is not divisible by the {devices} devices "
                         f"of mesh axis {data_axis!r}")
    ds = make_dataset(config, process_index=jax.process_index(), process_count=jax.process_count(),
                      start_step=start_step)
    sharding = NamedSharding(mesh, PartitionSpec(data_axis))

    def batches():
        try:
            for batch in ds.as_numpy_iterator():
                yield {k: jax.make_array_from_process_local_data(sharding, v) if k in DEVICE_KEYS else v
                       for k, v in batch.items()}
        except tf.errors.OpError as e:
            raise _explain(config, e) from e

    return _background(batches(), prefetch)


_closing: set[threading.Thread] = set()  # input threads still tearing down their tf.data iterators


@atexit.register
def _join_closing() -> None:
    """At exit, before TensorFlow is torn down: waits for the input threads still closing."""
    for thread in list(_closing):
        thread.join()


def _background(iterator: Iterator, size: int) -> Iterator:
    """Runs ``iterator`` in a daemon thread, ``size`` items ahead; re-raises its errors here. Closing
    it stops the thread, which then closes ``iterator`` itself: a tf.data iterator's teardown can
    wait tens of seconds for its own threads, and the next run need not wait for it (exit does)."""
    items: queue.Queue = queue.Queue(size)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work(source):
        try:
            for item in source:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            put(e)
        finally:
            getattr(source, "close", lambda: None)()

    thread = threading.Thread(target=work, args=(iterator,), daemon=True)
    thread.start()
    del iterator  # the thread's alone, so that it is torn down there
    try:
        while (item := items.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=1.0)
        if thread.is_alive():
            _closing.difference_update([t for t in _closing if not t.is_alive()])
            _closing.add(thread)


def _explain(config: InputConfig, error: tf.errors.OpError) -> Exception:
    """A ValueError naming the first shard of the split that fails to read or parse, else ``error``."""
    manifests, splits = _load(config)
    spec = _spec(next(iter(manifests.values())), ("signal", "scale"))
    for split in splits:
        manifest = manifests[split.directory]
        shape = (len(manifest["leads"]), manifest["window_samples"])

        def parse(serialized):
            example = tf.io.parse_single_example(serialized, spec)
            return tf.reshape(tf.io.decode_raw(example["signal"], tf.int16), shape), example["scale"]

        for path in split.files:
            try:
                for index, (_, scale) in enumerate(record_dataset(path).map(parse)):
                    fmt.check_scale(float(scale), path, index)
            except tf.errors.OpError as e:
                return ValueError(f"cannot read shard {path}: {e.message}")
            except ValueError as e:
                return e
    return error


def _read(split: _Split, files: tf.Tensor, mask: np.ndarray | None) -> tf.data.Dataset:
    """(global index, serialised example) of the shards ``files`` (indices), interleaved in a fixed
    order, keeping the examples ``mask`` selects."""
    paths, lengths = tf.constant(split.files), tf.constant(split.lengths, tf.int64)
    starts = tf.constant(split.offset + np.cumsum((0,) + split.lengths[:-1]), tf.int64)
    remote = fileio.is_url(split.directory)

    def shard(f):
        return record_dataset(paths[f], lengths[f], remote=remote).enumerate(starts[f])

    ds = tf.data.Dataset.from_tensor_slices(files).interleave(
        shard, cycle_length=min(len(split.files), 8), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if mask is not None:
        keep = tf.constant(mask)
        ds = ds.filter(lambda g, s: tf.gather(keep, g - split.offset))
    return ds


def _transform(config: InputConfig, manifests: dict[str, dict], splits: list[_Split]):
    """The per-example map ``(seed or None, global index, serialised) -> dict``."""
    first = manifests[splits[0].directory]
    stored = Recipe.of_manifest(first)
    samples, fs = stored.window_samples, stored.fs
    recipe = _input_recipe(config, stored)
    layouts = [(len(manifests[s.directory]["leads"]), _lead_rows(config, manifests[s.directory], s.directory))
               for s in splits]
    unknown = [v for v in config.views if v not in VIEWS]
    if unknown or not config.views:
        raise ValueError(f"unknown input view(s) {unknown or '(none)'}: choose from {', '.join(VIEWS)}")
    keys = ("signal", "scale", "record_id", "window") + (("patient_id",) if "patient" in config.views else ())
    spec = _spec(first, keys)
    starts = tf.constant([s.offset for s in splits[1:]], tf.int64)
    shard_paths = tf.constant([path for s in splits for path in s.files])
    shard_lengths = np.array(sum((s.lengths for s in splits), ()), np.int64)
    shard_ends = np.concatenate([s.offset + np.cumsum(s.lengths) for s in splits]).astype(np.int64)
    shard_starts, shard_ends = tf.constant(shard_ends - shard_lengths), tf.constant(shard_ends)
    labels = None if splits[0].labels is None else tf.constant(np.concatenate([s.labels for s in splits]))

    def augmented(x, seed):
        if seed is None or not config.augment:
            return x
        return rand_augment(x, seed, level=config.augment_level, num_ops=config.augment_ops,
                            prob=config.augment_prob, sampling_rate=recipe.fs, variant=config.augment_variant,
                            ops=config.augment_list or None)

    def finish(crop):
        """A crop (or a stack of crops) as the model sees it: filtered when the recipe filters crops, z-scored."""
        return zscore(band_filter(crop, recipe) if recipe.filter_on == "crop" else crop)

    def seeds(seed, view: int):
        """(crop seed, augmentation seed) of view ``view`` (0: ``series``, as ever), or (None, None)."""
        if seed is None:
            return None, None
        parent = seed if view == 0 else tf.random.experimental.stateless_fold_in(seed, view)
        return tf.unstack(tf.random.experimental.stateless_split(parent, 2))

    def views(x, seed, example):
        """The entries of ``config.views`` of one window: training with a seed, evaluation without."""
        out = {}
        if "series" in config.views:
            crop_seed, augment_seed = seeds(seed, 0)
            if seed is None:
                out["series"] = finish(fixed_crops(x, config.crop_samples, config.eval_crops))
            else:
                out["series"] = augmented(finish(random_crop(x, config.crop_samples, crop_seed)), augment_seed)
        if {"view1", "view2"} & set(config.views):
            two = fixed_crops(x, config.crop_samples, 2) if seed is None else None
            for i, name in enumerate(("view1", "view2")):
                crop_seed, augment_seed = seeds(seed, 1 + i)
                crop = two[i] if seed is None else random_crop(x, config.crop_samples, crop_seed)
                out[name] = augmented(finish(crop), augment_seed)
        if {"segment1", "segment2"} & set(config.views):
            first, second = split_segments(x, config.segment_samples, seeds(seed, 3)[0])
            out["segment1"], out["segment2"] = finish(first), finish(second)
        if "patient" in config.views:
            patient = tf.where(tf.strings.length(example["patient_id"]) > 0, example["patient_id"],
                               tf.strings.join(["record:", example["record_id"]]))
            out["patient"] = tf.cast(tf.strings.to_hash_bucket_fast(patient, (1 << 31) - 1), tf.int32)
        return out

    def decode(signal, layout):
        num_leads, rows = layout
        x = tf.reshape(tf.io.decode_raw(signal, tf.int16), (num_leads, samples))
        return x if rows == tuple(range(num_leads)) else tf.gather(x, rows)

    @tf.autograph.experimental.do_not_convert
    def transform(seed, g, serialized):
        example = tf.io.parse_single_example(serialized, spec)
        source = tf.reduce_sum(tf.cast(g >= starts, tf.int32))
        if len(set(layouts)) == 1:
            x = decode(example["signal"], layouts[0])
        else:
            x = tf.switch_case(source, [functools.partial(decode, example["signal"], layout) for layout in layouts])
        shard = tf.searchsorted(shard_ends, tf.reshape(g, [1]), side="right")[0]
        finite = tf.debugging.Assert(tf.math.is_finite(example["scale"]), [
            "non-finite scale in shard", tf.gather(shard_paths, shard), "example", g - tf.gather(shard_starts, shard)])
        with tf.control_dependencies([finite]):  # a damaged shard is an error naming it, never NaN inputs
            x = tf.cast(x, tf.float32) * example["scale"]
        if recipe.fs != fs:
            x = resample(x, fs, recipe.fs, recipe.resample)
        if recipe.filter_on == "window":
            x = band_filter(x, recipe)
        out = views(x, seed, example) if config.training else {"valid": tf.constant(True), **views(x, None, example)}
        out.update(record_id=example["record_id"], window=tf.cast(example["window"], tf.int32), source=source)
        if labels is not None:
            out["label"] = tf.gather(labels, g)
        return out

    return transform


def _lead_rows(config: InputConfig, manifest: dict, directory: str) -> tuple[int, ...]:
    """Rows of the stored signal holding the selected leads, in the selected order."""
    stored = lead_indices(manifest["leads"])
    wanted = lead_indices(config.leads)
    missing = [i for i in wanted if i not in stored]
    if missing:
        raise ValueError(f"lead(s) {', '.join(LEAD_NAMES[i] for i in missing)} not in {directory} "
                         f"(it has {', '.join(manifest['leads'])})")
    return tuple(stored.index(i) for i in wanted)


def _spec(manifest: dict, keys) -> dict:
    """tf.io parse specs of ``keys``, derived from the format's TFDS features dict."""
    from tensorflow_datasets.core import example_parser

    tasks = sorted(manifest.get("tasks") or {})
    features = fmt.features_dict(len(manifest["leads"]), manifest["window_samples"], tasks)
    specs = example_parser.ExampleParser(features.get_serialized_info()).flat_feature_specs
    return {k: specs[k] for k in keys}


def _load(config: InputConfig) -> tuple[dict[str, dict], list[_Split]]:
    """The folders' manifests and their splits, validated against the config; runs the label pass
    when a task is set."""
    manifests = fmt.read_manifests(config.data_dir)
    having = [d for d, m in manifests.items() if config.split in (m.get("splits") or {})]
    lacking = [d for d in manifests if d not in having]
    if not having or (config.training and lacking):
        have = {d: ", ".join(manifests[d].get("splits") or {}) or "none" for d in lacking}
        raise ValueError(f"split {config.split!r} not in " + "; ".join(f"{d} (it has: {h})" for d, h in have.items()))
    if not 0 < config.label_fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {config.label_fraction}")
    if config.task is None and config.label_fraction < 1:
        raise ValueError("label_fraction < 1 needs a task to stratify by")
    if config.task is None and config.exclude:
        raise ValueError("exclude needs a task (its label pass reads the examples' ids)")
    task = None if config.task is None else task_classes({d: manifests[d] for d in having}, config.task)
    splits, offset = [], 0
    for directory in having:
        split = _load_split(config, directory, manifests[directory], task, offset)
        splits.append(split)
        offset += sum(split.lengths)
    return manifests, splits


def _load_split(config: InputConfig, directory: str, manifest: dict, task: tuple[list[str], bool] | None,
                offset: int) -> _Split:
    shards = fmt.shard_files(directory, manifest, config.split)
    files, lengths = tuple(path for path, _ in shards), tuple(length for _, length in shards)
    if not sum(lengths):
        raise ValueError(f"split {config.split!r} of {directory} has no examples")
    missing = [f for f in files if not fileio.isfile(f)]
    if missing:
        raise FileNotFoundError(f"shard(s) listed in the manifest are missing: {', '.join(missing)}")
    window = model_recipe(dataclasses.replace(config, data_dir=directory)).window_samples
    longest = max(config.crop_samples, 2 * config.segment_samples if "segment1" in config.views else 0)
    if longest > window:
        raise ValueError(f"crop of {longest} samples is longer than the {window}-sample windows of {directory}"
                         + (f" at {config.sample_rate} Hz" if config.sample_rate else ""))
    check_preparation(config, directory, manifest)
    _lead_rows(config, manifest, directory)
    if task is None:
        for path, length in zip(files, lengths):  # a URL's shards: counted as they are read (a pass over the data)
            if not fileio.is_url(path) and _record_count(path) != length:
                raise ValueError(f"shard {path} holds {_record_count(path)} examples, the manifest says {length}")
        return _Split(directory, files, lengths, None, None, offset)
    spec = _spec(manifest, ("record_id", "window", f"labels/{config.task}"))
    record_ids, windows, names = [], [], []
    for path, length in zip(files, lengths):
        ids, index, rows = labels_lib.read_labels(path, config.task, spec)
        if len(ids) != length:
            raise ValueError(f"shard {path} holds {len(ids)} examples, the manifest says {length}")
        record_ids.extend(ids)
        windows.extend(index)
        names.extend(rows)
    labels, usable = labels_lib.encode(names, *task, record_ids)
    if config.exclude:
        usable &= np.array([(directory, r, int(w)) not in config.exclude for r, w in zip(record_ids, windows)], bool)
    if config.label_fraction < 1:
        usable = labels_lib.stratified_subset(record_ids, names, usable, config.label_fraction, config.seed)
    return _Split(directory, files, lengths, labels, None if usable.all() else usable, offset)


@functools.lru_cache(maxsize=4096)
def _counted(path: str, *version) -> int:
    return fmt.count_records(path)


def _record_count(path: str) -> int:
    """Examples in a shard (headers only), cached per file version."""
    return _counted(path, *fileio.version(path))


def _steps(config: InputConfig, splits: list[_Split], count: int) -> int:
    batch = _host_batch(config, count)
    counts = [sum(split.count(i, count) for split in splits) for i in range(count)]
    if not config.training:
        return max(1, math.ceil(max(counts) / batch))
    if min(counts) < batch:
        raise ValueError(f"split {config.split!r} gives process {counts.index(min(counts))} only {min(counts)} "
                         f"examples, fewer than the per-process batch of {batch}")
    return min(counts) // batch


def _host_batch(config: InputConfig, count: int) -> int:
    if config.batch_size <= 0 or config.batch_size % count:
        raise ValueError(f"global batch size {config.batch_size} is not a positive multiple of the "
                         f"{count} processes")
    return config.batch_size // count


def _process_count(count: int | None) -> int:
    return jax.process_count() if count is None else count


def _process_index(index: int | None) -> int:
    return jax.process_index() if index is None else index
