"""``stmem-finetune``: fine-tuning, linear probing and training from scratch on a labelled task.

    stmem-finetune --config ptbxl:st_mem --workdir runs/ptbxl_st_mem \\
        --config.data.dir=/data/ptbxl --config.init=runs/pretrain --config.mode=finetune

Modes (``config.mode``), under ``config.recipe`` (``stmem_jax.train.config``: the authors' by default):
  finetune  all weights from ``config.init`` (``train.layer_decay`` and ``model.drop_path`` as the
          recipe says: none for the authors');
  linprobe  frozen encoder from ``config.init``, only the head trains: on augmented random crops through
          the frozen encoder in the fine-tuning loop (``train.linprobe=frozen_encoder``, the authors'),
          or on cached features of the evaluation crops (``cached_features``, ``stmem_jax.train.linprobe``);
  scratch   random weights: the architecture of the encoder ``config.init`` names (the one it is compared
          with; only its shapes are used), else of the method ``config.model.kind`` built from
          ``config.model`` (``preset``, sizes).
``config.init``: a stmem-pretrain workdir (its ``encoder/`` or ``model/``), a saved model directory
(pre-training model or classifier; a classifier's head is replaced), a public ``.pth`` file, or
``random:<method>`` or ``random:<path>``, that method's (or that model's) encoder at random
initialisation (the random-encoder control).

The loss is the classification loss; the evaluator validates every epoch (``eval.max_evals`` caps
how often) and the state with the best validation loss (``eval.selection_loss``: of the 3 crops'
mean logits, the authors', or of their mean probabilities) or macro AUROC (``eval.select``) is
evaluated on the test split (the crops' probabilities averaged). The workdir gets
``test_metrics.json`` (written last: a finished run), ``test_metrics.csv``, ``test_predictions.npz``
and ``model/`` (the selected classifier, with its input recipe). A run resumes from its latest
checkpoint (``stmem_jax.train.loop``). Its ``config.json`` records its identity, with
``init_checksum``, the checksum of the weights ``init`` held: a rerun or a resume with other
settings (``train.config.identity``) or other weights under the same path is refused, and a
finished run is never reported for another.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from stmem_jax import infer, methods, models, overlap
from stmem_jax import mesh as meshlib
from stmem_jax.core import fileio
from stmem_jax.core.recipe import Recipe
from stmem_jax.core.shards import read_manifests
from stmem_jax.data.pipeline import global_batches, mixture_names, model_recipe, steps_per_epoch
from stmem_jax.data.tasks import resolve_task
from stmem_jax.model_dir import save_model
from stmem_jax.train import linprobe, loop, setup
from stmem_jax.train.classification import (checkpoints_for, crop_predictions, eval_interval, num_examples,
                                            scalars_of, score, validation)
from stmem_jax.train import config as config_lib
from stmem_jax.train.reporting import Reporter

MODES = ("finetune", "linprobe", "scratch")
RANDOM = "random:"  # init prefix of a randomly initialised encoder of a method
METRICS_FILE = "test_metrics.json"


def build_classifier(config: ml_collections.ConfigDict, num_classes: int, lead_ids: tuple[int, ...]
                     ) -> tuple[nn.Module, Any]:
    """The run's classifier and the pre-trained encoder parameters (None for scratch). Scratch takes
    the architecture of the encoder ``init`` names (the one it is compared with), else of
    ``model.kind`` built from ``config.model`` (``config.resolve_recipe``'s)."""
    config = config_lib.resolve_recipe(config)
    m = config.model
    if config.mode != "scratch" and not config.init:
        raise ValueError(f"mode {config.mode!r} needs pre-trained weights: set init (or use mode 'scratch')")
    if config.init:
        encoder, variables = random_encoder(config, lead_ids) if config.init.startswith(RANDOM) else \
            infer.load_encoder(config.init)
        fields = dict(num_classes=num_classes, drop_path=m.drop_path, dropout=m.dropout, dtype=jnp.dtype(m.dtype),
                      remat=m.remat)
        if "first_k_leads" in models.fields(type(encoder)):
            fields["first_k_leads"] = m.first_k_leads
        model = encoder.clone(**fields)
        encoder_params = None if config.mode == "scratch" else variables["params"]["encoder"]
    else:
        model, encoder_params = setup.scratch_classifier(config, num_classes, lead_ids), None
    model = setup.for_mode(model, config.mode)
    if model.seq_len != config.data.crop_samples:
        raise ValueError(f"the encoder takes {model.seq_len}-sample inputs but data.crop_samples is "
                         f"{config.data.crop_samples}")
    return model, encoder_params


def random_encoder(config: ml_collections.ConfigDict, lead_ids: tuple[int, ...]) -> tuple[nn.Module, Any]:
    """The encoder that ``init='random:<method or path>'`` names, initialised from ``train.seed``: the
    method's (built from ``config.model``) or the architecture of the model at the path, exported as
    after its method's pre-training (a classifier without one: its own initialisation)."""
    spec = config.init.removeprefix(RANDOM)
    key = jax.random.key(config.train.seed)
    if fileio.exists(spec):
        model, _ = infer.load(spec, ("model", "encoder"))
        method = methods.of(model)
        if method is None:  # an encoder or a classifier: its own initialisation
            encoder = model.clone(num_classes=0)
            params = models.init_variables(encoder, key)["params"]["encoder"]
            return encoder, jax.device_get({"params": {"encoder": params}})
    else:
        method = methods.get(spec)
        model = method.model(config, lead_ids)
    params = jax.jit(lambda: method.init_params(model, key, lead_ids))()
    encoder, variables = method.encoder(model, {"params": params, "extra": method.init_extra(model, params)})
    return encoder, jax.device_get(variables)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) one downstream run; returns its test metrics record (``test_metrics.json``)."""
    config = config_lib.resolve_recipe(config)
    config_lib.check_values(config)
    meshlib.initialize_from_config(config)
    if config.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {config.mode!r}")
    if config.eval.select not in ("loss", "auroc"):
        raise ValueError(f"eval.select must be 'loss' or 'auroc', got {config.eval.select!r}")
    if not config.data.dir:
        raise ValueError(f"task {config.data.task!r} needs data.dir (a stmem-prepare output); the stmem-finetune "
                         f"command prepares the built-in synthetic data when it is empty")
    workdir = fileio.absolute(workdir)
    config = with_identity(config)
    fileio.makedirs(workdir)
    if fileio.isfile(fileio.join(workdir, METRICS_FILE)):
        changed = config_lib.changes(workdir, config)
        if changed:
            raise ValueError(f"{workdir} holds a finished run with other settings (changed from its config.json: "
                             f"{config_lib.describe_changes(changed)}); use another workdir, or its own settings to "
                             f"read its results")
        print(f"{workdir} holds a finished run ({METRICS_FILE}): nothing to do", flush=True)
        return json.loads(fileio.read_text(fileio.join(workdir, METRICS_FILE)))
    task = resolve_task(config.data.dir, config.data.task, config.data.leads)
    leak, seen = pretraining_overlap(config, task)
    if config.data.exclude_pretraining_overlap and seen:
        task = dataclasses.replace(task, exclude=seen)
    model, encoder_params = build_classifier(config, len(task.classes), task.lead_ids)
    mesh = meshlib.make_mesh(config.mesh.fsdp)
    has_val = any(config.data.val_split in m["splits"] for m in read_manifests(task.data_dir).values())
    cached = config.mode == "linprobe" and config.train.linprobe == "cached_features"
    run = linprobe.train_head if cached else train_end_to_end
    params, selected, val, test = run(config, workdir, task, model, encoder_params, mesh, has_val)
    return _finish(config, workdir, task, model, params, selected, val, test, mesh, leak)


def encoder_input(config: ml_collections.ConfigDict, quiet: bool = False) -> ml_collections.ConfigDict:
    """``config``, or with ``data.sample_rate`` 0 and an ``init`` trained on another input than the
    data's rate and ``data.crop_samples`` (its saved recipe, ``infer.input_recipe``: e.g. CPC at
    100 Hz) a copy at that rate (the pipeline resamples) and crop length: an encoder meets the input
    it was trained on (set ``data.sample_rate`` to choose another)."""
    path = config.init.removeprefix(RANDOM)
    if config.data.sample_rate or not config.init or not fileio.exists(path):
        return config  # a random:<method> encoder is built for the config's input
    recipe = infer.input_recipe(path, prefer=("model", "encoder") if config.init.startswith(RANDOM) else
                                ("encoder", "model"))
    stored = {Recipe.of_manifest(m).fs for m in read_manifests(config.data.dir).values()}
    rate = 0 if stored == {recipe.fs} else recipe.fs
    if (rate, recipe.crop_samples) == (0, config.data.crop_samples):
        return config
    config = copy.deepcopy(config)
    config.data.sample_rate, config.data.crop_samples = rate, recipe.crop_samples
    if not quiet:
        print(f"input: {recipe.fs} Hz, {recipe.crop_samples}-sample crops, as {config.init} was trained "
              f"(data.sample_rate and data.crop_samples)", flush=True)
    return config


def init_checksum(config: ml_collections.ConfigDict, cache: dict | None = None) -> str:
    """What ``init`` holds (``infer.checksum``): its weights, or for scratch and ``random:<path>``
    (only the architecture is used) its model description; empty without init or with
    ``random:<method>`` (the config builds it). ``cache`` keeps checksums by (path, what) for a grid."""
    path = config.init.removeprefix(RANDOM)
    if not config.init or not fileio.exists(path):
        return ""
    architecture = config.init.startswith(RANDOM) or config.mode == "scratch"
    key = (fileio.absolute(path), architecture)
    if cache is None or key not in cache:
        prefer = ("model", "encoder") if config.init.startswith(RANDOM) else ("encoder", "model")
        value = infer.checksum(path, prefer, weights=not architecture)
        if cache is None:
            return value
        cache[key] = value
    return cache[key]


def with_identity(config: ml_collections.ConfigDict, cache: dict | None = None, quiet: bool = False
                  ) -> ml_collections.ConfigDict:
    """The config a run of ``config`` records as its identity (``config.json``): :func:`encoder_input`'s,
    with ``init_checksum`` (:func:`init_checksum`): a rerun with other weights under the same path is
    another run, and the recipe's fields resolved (``config.resolve_recipe``). Imports the method
    ``model.kind`` names (a method of your own: its saved models load)."""
    methods.get(config.model.kind)
    config = encoder_input(config_lib.resolve_recipe(config), quiet)  # resolve_recipe: a copy
    with config.unlocked():
        config.init_checksum = init_checksum(config, cache)
    return config


def pretraining_overlap(config: ml_collections.ConfigDict, task) -> tuple[dict[str, Any] | None, frozenset]:
    """With ``init`` a stmem-pretrain workdir: how many windows (and patients) of each downstream split
    were also in the split it pre-trained on (printed), and those windows as ``Task.exclude`` takes them;
    (None, empty) for other inits."""
    data = overlap.pretraining_data(config.init)
    if data is None:
        return None, frozenset()
    try:
        folders, split = data
        report, rows = overlap.compare(folders, task.data_dir, a_split=split)
    except (FileNotFoundError, ValueError) as error:
        print(f"pre-training overlap not checked: {error}", flush=True)
        return None, frozenset()
    if jax.process_index() == 0:
        for line in overlap.describe(report):
            print(f"pre-training overlap: {line}", flush=True)
        if report["total"]["windows"]:
            action = "left out" if config.data.exclude_pretraining_overlap else \
                "kept (data.exclude_pretraining_overlap=True leaves them out)"
            print(f"pre-training overlap: these windows were seen in pre-training; {action}", flush=True)
    return report | {"excluded": bool(config.data.exclude_pretraining_overlap)}, overlap.excluded(rows)


def _train_batch(config: ml_collections.ConfigDict, examples: int) -> int:
    """The global batch: ``train.batch_size``, or the most examples a multiple of the device count allows."""
    devices = jax.device_count()
    batch = min(config.train.batch_size, examples // devices * devices)
    if batch <= 0:
        raise ValueError(f"{examples} training example(s) cannot fill a batch on {devices} devices")
    if batch < config.train.batch_size:
        print(f"only {examples} training examples: global batch {batch} instead of {config.train.batch_size}",
              flush=True)
    return batch


def train_end_to_end(config, workdir, task, model, encoder_params, mesh, has_val):
    """finetune / scratch / linprobe through the frozen encoder: the classifier (a linear probe: its
    head) trains on augmented random crops; returns (params, selected step, validation metrics,
    None: the test split is predicted by ``_finish``)."""
    train_input = task.input(config, config.data.train_split, True, config.train.batch_size,
                             config.data.label_fraction)
    batch = _train_batch(config, num_examples(train_input))
    train_input = dataclasses.replace(train_input, batch_size=batch)
    schedule = loop.Schedule.of(config.train, batch, steps_per_epoch(train_input))
    run = setup.build(config, task.lead_ids, schedule, mesh.devices.flat, classifier=model, multilabel=task.multilabel)
    logits_fn = infer.outputs_fn(model, task.lead_ids)
    val_input = task.input(config, config.data.val_split, False, config.eval.batch_size)
    with contextlib.ExitStack() as stack:
        checkpoints = stack.enter_context(checkpoints_for(config, workdir, has_val))
        state, start, target = loop.init_or_restore(run.init_state, mesh, checkpoints, encoder_params, config=config)
        config_lib.save(workdir, config)
        reporter = stack.enter_context(Reporter(workdir, schedule.total_steps, schedule.steps_per_epoch, batch))
        step_fn = loop.jit_step(run.step, target, [meshlib.batch_sharding(mesh)] * len(run.inputs), mesh)

        validated = {}  # step -> validation metrics of this process's run (a resumed run recomputes the selected)

        def validate(state, step):
            val = validated[step] = validation(config, task, predict(logits_fn, state.params, val_input, mesh, task))
            reporter.write(step, scalars_of(val), prefix="validation")
            checkpoints.save_best(step, state, {"val_score": score(config, val)})

        batches = global_batches(train_input, mesh, data_axis=meshlib.BATCH_AXES, start_step=start) \
            if start < schedule.total_steps else iter(())
        state, step, _ = loop.run(state, step_fn, batches, run.key, keys=run.inputs, start=start,
                                  schedule=schedule, reporter=reporter, checkpoints=checkpoints,
                                  log_every=config.log.every_steps, checkpoint_every=config.checkpoint.every_steps,
                                  hooks=[loop.Hook(eval_interval(config, schedule), validate)] if has_val else [],
                                  sources=mixture_names(train_input))
        state, selected = loop.restore_best(checkpoints, state, target, step)
    val = None if not has_val else validated.get(selected) or validation(
        config, task, predict(logits_fn, state.params, val_input, mesh, task))
    return state.params, selected, val, None


def predict(logits_fn, params, input_config, mesh, task) -> dict[str, np.ndarray]:
    """``infer.predict`` of crop logits, as :func:`crop_predictions`: the crops' mean probabilities
    (``outputs``) and mean logits."""
    return crop_predictions(infer.predict(logits_fn, params, input_config, mesh), task.multilabel)


def _finish(config, workdir, task, model, params, selected, val, predictions, mesh, leak) -> dict[str, Any]:
    """Test predictions of the selected parameters (on the mesh) unless the trainer gave them; writes
    the model (all processes take part), the predictions and the metrics (process 0)."""
    test_input = task.input(config, config.data.test_split, False, config.eval.batch_size)
    if predictions is None:
        predictions = predict(infer.outputs_fn(model, task.lead_ids), params, test_input, mesh, task)
    test = validation(config, task, predictions)
    record = {"task": task.name, "mode": config.mode, "init": config.init, "init_checksum": config.init_checksum,
              "data_dir": task.data_dir,
              "leads": config.data.leads, "label_fraction": config.data.label_fraction, "seed": config.train.seed,
              "classes": task.classes, "multilabel": task.multilabel, "selected_step": selected,
              "select": config.eval.select if val is not None else "last", "validation": val, "test": test,
              "pretraining_overlap": leak}
    save_model(fileio.join(workdir, "model"), model, {"params": params}, overwrite=True,
               metadata={"task": task.name, "classes": task.classes, "multilabel": task.multilabel,
                         "leads": config.data.leads, "selected_step": selected,
                         "recipe": model_recipe(test_input).to_dict()})
    if jax.process_index() == 0:
        with fileio.open(fileio.join(workdir, "test_predictions.npz"), "wb") as f:
            np.savez(f, record_id=predictions["record_id"], window=predictions["window"], label=predictions["label"],
                     probs=predictions["outputs"], classes=np.array(task.classes))
        columns = ["task", "mode", "leads", "label_fraction", "seed", "selected_step"]
        values = {k: record[k] for k in columns} | {"num_examples": test["num_examples"]} | scalars_of(test)
        with fileio.open(fileio.join(workdir, "test_metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(values))
            writer.writeheader()
            writer.writerow(values)
        with fileio.open(fileio.join(workdir, METRICS_FILE), "w") as f:
            json.dump(record, f, indent=2)
    multihost_utils.sync_global_devices("downstream run finished")
    return record

