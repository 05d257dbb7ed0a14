"""The config schemas of the trainers (ml_collections), with the authors' recipe as the default.

``pretraining()`` is what ``configs/pretrain/*.py`` start from, ``downstream()`` what
``configs/downstream/*.py`` start from; both share the sections built here once. Every
field can be overridden on the command line (``--config.train.batch_size=512``). ``load_config``
reads a config as ``--config`` does: a shipped config by name (``st_mem:vit_base``) or a file.

``config.recipe`` chooses the recipe: ``authors`` (the default: what the ST-MEM authors' public code
does, the project's spec ``recipe.md``) or ``stmem_jax`` (our departures from it, each with its
reason in docs/guide.md). Every field of :data:`RECIPE_FIELDS` is None by default, meaning "as
``config.recipe`` says"; set it to choose that item alone. :func:`resolve_recipe` fills them in at
the start of every trainer, and the resolved values are what ``config.json`` records.
"""

from __future__ import annotations

import copy
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
from stmem_jax.core import recipe as recipe_lib
from stmem_jax.core.recipe import FILTER_PLACES, FLAT_LEADS, RESAMPLING, Recipe
from stmem_jax.initialization import INIT_SCHEMES
from stmem_jax.models import ENCODER_SIZES, PRESETS
from stmem_jax.train.optim import DECAY_ON

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


RECIPES = tuple(recipe_lib.RECIPES)  # authors, stmem_jax: the order of RECIPE_FIELDS' pairs
# field -> (the authors' value, stmem-jax's): what a field left None takes from config.recipe
RECIPE_FIELDS = {
    "data.resample": ("fft", "polyphase"),
    "data.filter": ("crop", "record"),
    "data.flat_leads": ("keep", "drop"),
    "data.augment_variant": ("authors", "stmem_jax"),
    "train.weight_decay": (0.01, 0.05),
    "train.weight_decay_on": ("all", "kernels"),
    "train.layer_decay": (1.0, 0.75),
    "model.drop_path": (0.0, 0.1),
    "model.init_scheme": ("pytorch", "xavier"),
    "train.linprobe": ("frozen_encoder", "cached_features"),
    "eval.selection_loss": ("mean_logits", "mean_probabilities"),
    "eval.max_evals": (0, 50),
}


def resolve_recipe(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with every field of :data:`RECIPE_FIELDS` it has that is None set to
    ``config.recipe``'s value (fields set stay as they are)."""
    if config.get("recipe") not in RECIPES:
        raise ValueError(f"recipe={config.get('recipe')!r}: use {' or '.join(RECIPES)}")
    config = copy.deepcopy(config)
    for field, values in RECIPE_FIELDS.items():
        section, name = field.split(".")
        if section in config and name in config[section] and config[section][name] is None:
            config[section][name] = values[RECIPES.index(config.recipe)]
    return config


def _common(preset: str) -> ml_collections.ConfigDict:
    """The sections and fields every trainer has."""
    config = ml_collections.ConfigDict()
    config.recipe = "authors"          # authors (the ST-MEM authors' code) | stmem_jax (our departures): what
                                       # every field shown None follows (docs/guide.md, "The recipe")
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
        resample=placeholder(str),     # fft (each native 10 s window) | polyphase (the record): how the folders were
                                       # resampled, and the pipeline's resampling to sample_rate
        filter=placeholder(str),       # crop (each crop after cropping) | window (each stored window) | record (none
                                       # in the pipeline: the folders were filtered at preparation)
        flat_leads=placeholder(str),   # keep | drop: what the folders' preparation did with records with a flat lead
        augment_level=10,              # RandAugment magnitude 0..10
        augment_ops=2,                 # ops drawn per input
        augment_prob=0.5,              # probability of each drawn op
        augment_variant=placeholder(str),  # authors (two distinct ops; the spec's) | stmem_jax (ours, with replacement)
        augment_list="",               # comma-separated RandAugment ops to draw from; empty: all eight
        shuffle_buffer=10_000,
        synthetic_records=2_000,       # the built-in synthetic data (data.dir empty)
        synthetic_seed=0,
        workers=2,
    ))
    config.train = ml_collections.ConfigDict(dict(
        seed=0,
        batch_size=64,                 # global, per optimizer step. Batch, epochs and warm-up are ours: the authors'
                                       # YAML holds placeholders (16, 10, 3) beside a dummy dataset
        grad_accum_steps=0,            # micro-batches per step (memory), same result as one big batch;
                                       # 0: automatic (1; on CPU at most 8 per device, 4 for ViT-B)
        epochs=100,                    # ours (see batch_size)
        num_steps=0,                   # > 0 overrides epochs
        warmup_epochs=5,               # ours (see batch_size)
        warmup_steps=-1,               # >= 0 overrides warmup_epochs
        base_lr=1e-3,                  # x global batch / 256
        lr=0.0,                        # > 0 sets the peak learning rate directly
        min_lr=0.0,
        weight_decay=placeholder(float),
        weight_decay_on=placeholder(str),  # all (every trainable parameter) | kernels (Dense kernels only)
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
    """Pre-training (stmem-pretrain) with ``method`` (``stmem_jax.methods``) under ``config.recipe`` (the
    authors' by default: AdamW betas (0.9, 0.95), weight decay 0.01 on every parameter, lr 1.5e-4 x
    batch / 256); ``config.model`` also holds the method's own fields. Batch 512, 800 epochs and 40
    warm-up epochs are ours (the authors' YAML holds placeholders beside a dummy dataset: 16, 10,
    3; 800 epochs is what a third party reports for the released model). Presets: ``vit_base`` (the
    paper's), ``vit_small``, ``tiny`` (a CPU run of minutes: float32, batch 64, 30 epochs)."""
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
    """Fine-tuning, linear probing and training from scratch (stmem-finetune) under ``config.recipe``
    (the authors' by default: AdamW betas (0.9, 0.999), one learning rate 1e-3 x batch / 256 and
    weight decay 0.05 on every trainable parameter, no drop path, RandAugment, model selection every
    epoch); the configs in ``configs/downstream`` set the task and dataset. Batch 64, 100
    epochs, 5 warm-up epochs and at least 1000 steps are ours (the authors' YAML holds placeholders
    beside a dummy dataset: 16, 10, 3)."""
    config = _common("vit_base")
    config.mode = "finetune"           # finetune | linprobe | scratch
    config.init = ""                   # pre-trained weights (finetune, linprobe): a workdir, model directory or .pth;
                                       # random:<method or path> a randomly initialised encoder; scratch: whose
                                       # architecture to train (empty: model.kind from model.preset and sizes)
    config.model.update(
        kind="st_mem",                 # scratch: the method whose encoder trains (st_mem | mtae | mlae | ...)
        drop_path=placeholder(float),  # stochastic depth, rising linearly over the blocks to this rate
        init_scheme=placeholder(str),  # pytorch (PyTorch's defaults) | xavier (Xavier-uniform kernels, zero biases):
                                       # the scratch encoder's and the new head's initialisation
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
    config.train.weight_decay = 0.05   # AdamW's decoupled weight decay (downstream: 0.05 in both recipes)
    config.train.layer_decay = placeholder(float)  # finetune: a block's lr x this per block above it (1: none)
    config.train.linprobe = placeholder(str)  # frozen_encoder (the head on augmented random crops through it) |
                                       # cached_features (on the cached features of the evaluation crops, fast)
    config.train.min_steps = 1000      # with epochs: at least this many steps (1-5% of the labels: few per epoch)
    config.eval.update(
        crops=Recipe.eval_crops,
        max_evals=placeholder(int),    # with every_steps 0: every epoch, at most this many times (0: no cap)
        select="loss",                 # loss | auroc: the validation metric that picks the test checkpoint
        selection_loss=placeholder(str),  # mean_logits (cross-entropy of the crops' mean logits) |
                                       # mean_probabilities (of their mean probabilities): eval.select's loss
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
    "eval.batch_size": (1, None, True), "eval.max_evals": (0, None, True), "eval.crops": (1, None, True),
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


# field -> the values it takes (None: as config.recipe says); a two-way field's are the recipes' own
CHOICES = {"recipe": RECIPES, "data.resample": RESAMPLING, "data.filter": FILTER_PLACES, "data.flat_leads": FLAT_LEADS,
           "train.weight_decay_on": DECAY_ON, "model.init_scheme": INIT_SCHEMES,
           **{field: RECIPE_FIELDS[field] for field in ("data.augment_variant", "train.linprobe",
                                                          "eval.selection_loss")}}


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
    for field, allowed in CHOICES.items():
        section, _, name = field.rpartition(".")
        tree = config[section] if section else config
        if section and section not in config or name not in tree or tree[name] is None:
            continue
        if tree[name] not in allowed:
            problems.append(f"{field}={tree[name]!r} is not one of {', '.join(allowed)}")
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
        if key in RECIPE_FIELDS and value is None:
            authors, ours = RECIPE_FIELDS[key]
            meaning += f" [None: as recipe says, authors {authors!r}, stmem_jax {ours!r}]"
        lines.append(f"  --config.{key:<{size - 10}}  {value!r:<14}  {meaning}".rstrip())
    return lines
