"""The config schemas of the trainers (ml_collections), with the public recipes as defaults.

``pretraining()`` is what ``configs/pretrain/*.py`` start from, ``downstream()`` what
``configs/downstream/*.py`` start from; both share the sections built here once. Every
field can be overridden on the command line (``--config.train.batch_size=512``). ``load_config``
reads a config as ``--config`` does: a shipped config by name (``st_mem:vit_base``) or a file.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import sys
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from stmem_jax import methods
from stmem_jax.core import fileio
from stmem_jax.core.recipe import Recipe
from stmem_jax.models import ENCODER_SIZES, PRESETS

PRETRAINING_PRESETS = ("vit_base", "vit_small", "tiny")


# the package ``configs`` beside ``stmem_jax`` (a source checkout's top level, or site-packages)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def config_names() -> dict[str, str]:
    """``{name: path}`` of the config files shipped with the package (``configs/*/NAME.py``)."""
    return {name[:-3]: os.path.join(CONFIG_DIR, folder, name) for folder in sorted(os.listdir(CONFIG_DIR))
            if os.path.isdir(os.path.join(CONFIG_DIR, folder)) and not folder.startswith("_")
            for name in sorted(os.listdir(os.path.join(CONFIG_DIR, folder)))
            if name.endswith(".py") and not name.startswith("_")}


def resolve(spec: str) -> str:
    """``NAME[:ARG]`` of a shipped config (``st_mem:vit_base``, ``grid:ptbxl:st_mem``) or ``PATH[:ARG]``
    of a config file -> ``PATH[:ARG]``."""
    name, colon, arg = spec.partition(":")
    if os.path.isfile(name) or not name:
        return spec
    names = config_names()
    if name not in names:
        raise ValueError(f"config {name!r} is neither a file nor a shipped config ({', '.join(names)})")
    return names[name] + colon + arg


def load_config(spec: str, arg: str = "") -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config, as ``--config`` loads it: a shipped config's name or a file's
    path (an argument after ``:`` in ``spec`` takes the place of ``arg``)."""
    path, colon, given = resolve(spec).partition(":")
    spec_ = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module.get_config(given if colon else arg)


def _common(preset: str) -> ml_collections.ConfigDict:
    """The sections and fields every trainer has."""
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        preset=preset,                 # tiny | vit_small | vit_base
        dtype="float32",               # compute dtype (float32 | bfloat16); parameters stay float32
        remat=False,                   # recompute activations in the backward pass: less memory, ~1/3 more compute
    ))
    for field in ENCODER_SIZES:
        config.model[field] = placeholder(int)  # set to override the preset
    config.data = ml_collections.ConfigDict(dict(
        dir="",                        # stmem-prepare output(s), comma-separated; empty: built-in synthetic data
        weights="",                    # with several folders: sampling share of each (comma-separated); empty: the union
        leads="12",                    # 12 | limb | 1 (lead I) | a lead name | comma-separated names (I,II,V1)
        crop_samples=Recipe.crop_samples,
        sample_rate=0,                 # > 0: windows resampled to this rate (Hz) in the pipeline; 0: the stored rate
        bandpass=False,                # filter on the fly (for shards prepared with --no-filter)
        shuffle_buffer=10_000,
        synthetic_records=2_000,       # the built-in synthetic data (data.dir empty)
        synthetic_seed=0,
        workers=2,
    ))
    config.train = ml_collections.ConfigDict(dict(
        seed=0,
        batch_size=64,                 # global, per optimizer step
        grad_accum_steps=0,            # micro-batches per step (memory), same result as one big batch;
                                       # 0: automatic (1; on CPU at most 8 per device, 4 for ViT-B)
        epochs=100,
        num_steps=0,                   # > 0 overrides epochs
        warmup_epochs=5,
        warmup_steps=-1,               # >= 0 overrides warmup_epochs
        base_lr=1e-3,                  # x global batch / 256
        lr=0.0,                        # > 0 sets the peak learning rate directly
        min_lr=0.0,
        weight_decay=0.05,
        weight_decay_on="kernels",     # kernels (Dense kernels only) | all (every parameter, as the public code)
        b1=0.9,
        b2=0.999,
        clip_norm=0.0,
    ))
    config.mesh = ml_collections.ConfigDict(dict(fsdp=1))  # > 1 shards parameters over that many devices
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=1, asynchronous=True))
    config.eval = ml_collections.ConfigDict(dict(every_steps=0, batch_size=64))
    config.log = ml_collections.ConfigDict(dict(every_steps=50))
    config.distributed = ml_collections.ConfigDict(dict(
        coordinator_address="", num_processes=1, process_id=0,
        auto=False,                    # jax.distributed.initialize() auto-detection (TPU pods, SLURM)
    ))
    return config


def pretraining(preset: str = "vit_base", method: str = "st_mem") -> ml_collections.ConfigDict:
    """Pre-training (stmem-pretrain) with ``method`` (``stmem_jax.methods``), the ST-MEM paper's
    recipe; ``config.model`` also holds the method's own fields. Presets: ``vit_base`` (the paper's),
    ``vit_small``, ``tiny`` (a CPU run of minutes: float32, batch 64, 30 epochs)."""
    if preset not in PRETRAINING_PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use {', '.join(PRETRAINING_PRESETS)}")
    config = _common(preset)
    config.method = method             # st_mem | mtae | mlae | the module path of a method of your own
    config.model.dtype = "bfloat16"
    config.model.update(methods.get(method).config())
    config.data.update(
        split="train",
        val_split="validation",
        lead_masking=0.0,              # random lead masking (RLM): each lead zeroed with this probability
        lead_masking_restandardize=False,  # then re-standardise the kept leads together (the public code's variant)
        augment=False,                 # RandAugment of the training inputs (finetune, scratch; pre-training: each view)
        augment_level=10,              # RandAugment magnitude 0..10
        augment_ops=2,                 # ops drawn per input
        augment_prob=0.5,              # probability of each drawn op
        segment_samples=1200,          # segment1 / segment2 inputs (CMSC): each this long, adjacent
    )
    config.train.update(
        batch_size=512,
        epochs=800,
        max_steps_per_run=0,           # > 0: stop (with a checkpoint) after this many steps; rerun to go on
        warmup_epochs=40,
        base_lr=1.5e-4,
        b2=0.95,
    )
    config.checkpoint.keep = 3
    config.eval.update(every_steps=5000, batch_size=256)
    config.log.figure_every_steps = 5000
    if preset == "tiny":  # a CPU run of minutes on the built-in synthetic data
        config.model.dtype = "float32"
        config.train.update(batch_size=64, epochs=30, warmup_epochs=3, base_lr=1e-3)
        config.data.synthetic_records = 1_000
        config.checkpoint.every_steps = 200
        config.eval.update(every_steps=200, batch_size=64)
        config.log.update(every_steps=20, figure_every_steps=200)
    return config


def downstream() -> ml_collections.ConfigDict:
    """Fine-tuning, linear probing and training from scratch (stmem-finetune), the public recipe;
    the configs in ``configs/downstream`` set the task and dataset."""
    config = _common("vit_base")
    config.mode = "finetune"           # finetune | linprobe | scratch
    config.init = ""                   # pre-trained weights (finetune, linprobe): a workdir, model directory or .pth;
                                       # random:<method or path> a randomly initialised encoder; scratch: whose
                                       # architecture to train (empty: model.kind from model.preset and sizes)
    config.model.update(
        kind="st_mem",                 # scratch: the method whose encoder trains (st_mem | mtae | mlae | ...)
        drop_path=0.1,
        dropout=0.0,
        first_k_leads=False,           # the public code's rule: a k-lead input uses lead embeddings 0..k-1
    )
    config.data.update(
        task="",                       # a task of the manifest; empty: its only task
        label_fraction=1.0,            # stratified by record, seeded by train.seed
        train_split="train",
        val_split="validation",        # model selection; a dataset without it uses the last state
        test_split="test",
        augment=True,                  # RandAugment of the training inputs (finetune, scratch; pre-training: each view)
        feature_cache="",              # linprobe feature cache; empty: <workdir>/features
        exclude_pretraining_overlap=False,  # leave out windows also in init's pre-training data (a workdir)
    )
    config.train.layer_decay = 0.75    # finetune only
    config.train.min_steps = 1000      # with epochs: at least this many steps (1-5% of the labels: few per epoch)
    config.eval.update(
        crops=Recipe.eval_crops,
        max_evals=50,                  # with every_steps 0: every epoch, at most this many times
        select="loss",                 # loss | auroc: the validation metric that picks the test checkpoint
    )
    return config


# field -> (lowest, highest or None, whether the lowest is allowed[, whether the highest is: True]): the
# ranges in which a value means something; a method declares its own fields' alike (Method.ranges)
RANGES = {
    "train.batch_size": (1, None, True), "train.grad_accum_steps": (0, None, True), "train.epochs": (0, None, True),
    "train.num_steps": (0, None, True), "train.min_steps": (0, None, True), "train.warmup_epochs": (0, None, True),
    "train.base_lr": (0, None, False),
    "train.lr": (0, None, True), "train.min_lr": (0, None, True), "train.weight_decay": (0, None, True),
    "train.b1": (0, 1, True, False), "train.b2": (0, 1, True, False), "train.clip_norm": (0, None, True),
    "train.layer_decay": (0, 1, False), "train.max_steps_per_run": (0, None, True),
    "model.drop_path": (0, 1, True, False), "model.dropout": (0, 1, True, False),
    **{f"model.{size}": (1, None, True) for size in ENCODER_SIZES},
    "data.label_fraction": (0, 1, False), "data.lead_masking": (0, 1, True, False),
    "data.crop_samples": (1, None, True), "data.sample_rate": (0, None, True), "data.segment_samples": (1, None, True), "data.augment_level": (0, 10, True),
    "data.augment_ops": (0, None, True), "data.augment_prob": (0, 1, True),
    "data.shuffle_buffer": (1, None, True), "data.synthetic_records": (1, None, True), "data.workers": (1, None, True),
    "checkpoint.every_steps": (1, None, True), "checkpoint.keep": (1, None, True), "eval.every_steps": (0, None, True),
    "eval.batch_size": (1, None, True), "eval.max_evals": (1, None, True), "eval.crops": (1, None, True),
    "log.every_steps": (1, None, True), "log.figure_every_steps": (0, None, True), "mesh.fsdp": (1, None, True),
}


def _outside(field: str, value: Any, bounds: tuple) -> str | None:
    """``<field>=<value> is outside <range>`` (or ``is not a number``) when ``value`` is not within
    ``bounds`` (a :data:`RANGES` entry); None when it is."""
    low, high, low_allowed, high_allowed = (*bounds, True)[:4]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{field}={value!r} is not a number"
    if value < low or (value == low and not low_allowed) or (high is not None and (
            value > high or (value == high and not high_allowed))):
        return (f"{field}={value} is outside {'[' if low_allowed else '('}{low}, "
                + ("inf)" if high is None else f"{high}{']' if high_allowed else ')'}"))
    return None


def check_values(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming every field of ``config`` whose value means nothing (a negative
    learning rate, ``mask_ratio=0``, ``checkpoint.keep=0``, no step to train, ...): the common
    fields' :data:`RANGES`, the pre-training method's own (``Method.ranges``), then what the method
    checks across fields (``Method.check``). Builds, compiles and writes nothing: the commands call
    it first."""
    method = methods.get(config.method) if "method" in config else None
    ranges = RANGES | ({f"model.{k}": v for k, v in method.ranges().items()} if method else {})
    problems = []
    for field, bounds in ranges.items():
        section, name = field.split(".")
        if section in config and config[section].get(name) is not None:
            problems.append(_outside(field, config[section][name], bounds))
    problems = [p for p in problems if p]
    train = config.train
    if not problems and not (train.num_steps or train.epochs):
        problems.append("train.num_steps and train.epochs are both 0: nothing to train")
    if not problems and train.warmup_steps < -1:
        problems.append(f"train.warmup_steps={train.warmup_steps}: -1 (use warmup_epochs) or a step count")
    if not problems and "preset" in config.model and config.model.preset not in PRESETS:
        problems.append(f"model.preset={config.model.preset!r} is not one of {', '.join(PRESETS)}")
    if not problems and method:
        problems += method.check(config)
    if problems:
        raise ValueError("the config makes no sense: " + "; ".join(problems))


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Writes ``<workdir>/config.json`` (process 0), what :func:`changes` compares a rerun with."""
    import jax

    if jax.process_index() == 0:
        fileio.write_text(fileio.join(workdir, "config.json"), config.to_json(indent=2))


# A run's identity is every field of its config, except these, which change only its speed, its memory,
# its logging or where it writes: a resume or a rerun may change them (a prefix ending in "." names a section).
NOT_IDENTITY = ("checkpoint.", "log.", "mesh.", "distributed.", "eval.batch_size", "data.workers",
                "data.feature_cache", "train.grad_accum_steps", "train.max_steps_per_run", "model.remat")
# the length of the run: a resume may change it (the run goes on to its new end); a finished downstream run and
# the grid's runs compare it too (their results are those of their length)
EXTENDABLE = ("train.epochs", "train.num_steps", "train.min_steps")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def identity(config: ml_collections.ConfigDict | dict, *, resume: bool = False) -> dict[str, Any]:
    """``{field: value}`` of the fields that say what a run computes: all but ``NOT_IDENTITY`` (and,
    when ``resume``, ``EXTENDABLE``): the method and its own fields, the model, the data and its
    recipe (``data.sample_rate``, lead masking, ...), the optimizer and its schedule, the downstream
    mode, task and ``init`` (with its weights' checksum), the seed."""
    flat = _flat(json.loads(config.to_json()) if isinstance(config, ml_collections.ConfigDict) else config)
    ignored = NOT_IDENTITY + (EXTENDABLE if resume else ())
    return {k: v for k, v in flat.items() if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in ignored)}


def changes(workdir: str, config: ml_collections.ConfigDict, *, resume: bool = False) -> dict[str, tuple[Any, Any]]:
    """``{field: (saved, now)}`` of the identity fields (:func:`identity`) in which ``config`` differs
    from the one a run saved in ``<workdir>/config.json`` (a field one of them lacks is ``'absent'``
    there); empty when there is none to compare with."""
    try:
        saved = identity(json.loads(fileio.read_text(fileio.join(workdir, "config.json"))), resume=resume)
    except (OSError, ValueError, AttributeError):
        return {}
    now = identity(config, resume=resume)
    return {k: (saved.get(k, "absent"), now.get(k, "absent")) for k in sorted(set(saved) | set(now))
            if saved.get(k, "absent") != now.get(k, "absent")}


def describe_changes(changed: dict[str, tuple[Any, Any]], most: int = 8) -> str:
    """``field (saved -> now), ...`` of the first ``most`` changes."""
    more = f" and {len(changed) - most} more" if len(changed) > most else ""
    return ", ".join(f"{k} ({saved!r} -> {now!r})" for k, (saved, now) in list(changed.items())[:most]) + more


def _comments(source: str) -> dict[str, str]:
    """``{field: comment}`` from the comments beside fields in a config schema's source: ``name=...,  #``
    inside ``config.<section> = ConfigDict(dict(`` or ``config.<section>.update(`` (``model`` inside a
    method's ``fields = ConfigDict(``), ``config.<field> =``, ``config.<section>.<name> =`` and
    ``fields.<name> =`` lines; a comment line right below continues the one above."""
    helps, section, last = {}, "", None
    for line in source.splitlines():
        text = line.strip()
        opened = re.match(r"(?:config\.(\w+)\s*=\s*ml_collections\.ConfigDict\(|config\.(\w+)\.update\(|"
                          r"fields\s*=\s*ml_collections\.ConfigDict\()", text)
        if opened:
            section = opened[1] or opened[2] or "model"
        if text.startswith("#") and last:
            helps[last] += " " + text.lstrip("# ")
            continue
        field = re.match(r"(?:config\.(\w+)\.(\w+)|config\.(\w+)|fields\.(\w+)|(\w+))\s*=[^=].*?#\s*(.+)$", text)
        if field is None:
            last = None
            continue
        last = (f"{field[1]}.{field[2]}" if field[1] else field[3] or
                (f"model.{field[4]}" if field[4] else f"{section}.{field[5]}"))
        helps[last] = field[6]
    return helps


def describe_fields(config: ml_collections.ConfigDict, file: str = "") -> list[str]:
    """A line per field of ``config``: ``--config.<field>``, its default, what it means (from the
    comments where the schemas, the methods' fields and the config ``file`` write them)."""
    from stmem_jax.methods.base import Method

    sources = [inspect.getsource(sys.modules[__name__])] + ([open(file).read()] if file else [])
    sources += [inspect.getsource(cls.config) for method in methods.names()
                for cls in type(methods.get(method)).__mro__ if issubclass(cls, Method) and "config" in vars(cls)]
    helps = {}
    for source in sources:
        helps |= _comments(source)

    def flat(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    rows = list(flat(config.to_dict()))
    size = max(len(k) for k, _ in rows) + 10
    lines = []
    for key, value in rows:
        meaning = helps.get(key) or helps.get(key.split(".", 1)[-1]) or \
            ("set to override the preset" if value is None else "")
        lines.append(f"  --config.{key:<{size - 10}}  {value!r:<14}  {meaning}".rstrip())
    return lines
