"""The config schemas of the trainers (ml_collections), with the public recipes as defaults.

``pretraining()`` is what ``configs/pretrain/*.py`` start from, ``downstream()`` what
``configs/downstream/*.py`` start from; both share the sections built here once. Every field can be
overridden on the command line (``--config.train.batch_size=512``). ``load_config`` reads a config
file as ``--config`` does.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections
from ml_collections.config_dict import placeholder

from stmem_jax import methods
from stmem_jax.core.recipe import Recipe
from stmem_jax.models import ENCODER_SIZES

PRETRAINING_PRESETS = ("vit_base", "vit_small", "tiny")


def load_config(path: str, arg: str = "") -> ml_collections.ConfigDict:
    """``get_config(arg)`` of a config file, as ``config_flags`` would load it."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


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
    the files in ``configs/downstream`` set the task and dataset."""
    config = _common("vit_base")
    config.mode = "finetune"           # finetune | linprobe | scratch
    config.init = ""                   # pre-trained weights (finetune, linprobe): a workdir, model directory or .pth;
                                       # random:<method> for a randomly initialised encoder of that method
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
        augment=True,                  # RandAugment (finetune, scratch)
        feature_cache="",              # linprobe feature cache; empty: <workdir>/features
        exclude_pretraining_overlap=False,  # leave out windows also in init's pre-training data (a workdir)
    )
    config.train.layer_decay = 0.75    # finetune only
    config.eval.update(
        crops=Recipe.eval_crops,
        max_evals=50,                  # with every_steps 0: every epoch, at most this many times
        select="loss",                 # loss | auroc: the validation metric that picks the test checkpoint
    )
    return config
