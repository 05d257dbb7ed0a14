"""``stmem-finetune``: fine-tuning, linear probing and training from scratch on a labelled task.

    stmem-finetune --config configs/downstream/ptbxl.py:st_mem --workdir runs/ptbxl_st_mem \\
        --config.data.dir=/data/ptbxl --config.init=runs/pretrain --config.mode=finetune

Modes (``config.mode``):
  finetune  all weights from ``config.init``, layer-wise learning-rate decay, drop-path;
  linprobe  frozen encoder from ``config.init``: the pooled features of the evaluation crops of
            every example are computed once, cached as ``.npz`` (``<workdir>/features`` unless
            ``data.feature_cache`` is set) and only the head trains, on every crop of the training
            examples, with the same optimizer settings (no augmentation);
  scratch   random weights, the encoder built from ``config.model`` (``kind``, ``preset``, sizes).
``config.init``: a stmem-pretrain workdir (its ``encoder/`` or ``model/``), a saved model directory
(pre-training model or classifier; a classifier's head is replaced), or a public ``.pth`` file.

Validation runs at intervals (3 crops, probabilities averaged); the state with the best
validation loss or macro AUROC (``eval.select``) is evaluated on the test split. The workdir gets
``test_metrics.json`` (written last: a finished run), ``test_metrics.csv``,
``test_predictions.npz`` and ``model/`` (the selected classifier). A finetune or scratch run
resumes from its latest checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from ml_collections.config_dict import placeholder

from stmem_jax import metrics as metrics_lib
from stmem_jax.checkpoint import MODEL_FILE, load_model, save_model
from stmem_jax.cli import run_config_command
from stmem_jax.data.format import read_manifest
from stmem_jax.data.pipeline import InputConfig, global_batches, lead_indices_for, steps_per_epoch
from stmem_jax.models import PRETRAINING_KINDS, create_model, model_config, pretrained_encoder
from stmem_jax.train import mesh as meshlib
from stmem_jax.train.checkpointing import Checkpoints, abstract_with_shardings
from stmem_jax.train.optim import adamw, peak_learning_rate, schedule
from stmem_jax.train.pretrain import NonFiniteLoss, TrainState, raise_if_bad, synthetic_data
from stmem_jax.train.reporting import Reporter, scalars

MODES = ("finetune", "linprobe", "scratch")
SIZE_FIELDS = ("width", "depth", "heads", "mlp_dim")
# tasks of the built-in synthetic data (PTB-XL layout) used when data.dir is empty
SYNTHETIC_TASKS = ("st_mem", "all", "diagnostic", "subdiagnostic", "superdiagnostic", "rhythm")
METRICS_FILE = "test_metrics.json"


def base_config() -> ml_collections.ConfigDict:
    """Defaults of every downstream run (the public recipe); the files in ``configs/downstream``
    set the task and dataset."""
    config = ml_collections.ConfigDict()
    config.mode = "finetune"           # finetune | linprobe | scratch
    config.init = ""                   # pre-trained weights (finetune, linprobe): see the module docstring
    config.model = ml_collections.ConfigDict(dict(
        kind="st_mem",                 # scratch only: st_mem | mtae | mlae (their classification encoders)
        preset="vit_base",             # scratch only
        dtype="float32",
        drop_path=0.1,
        dropout=0.0,
        first_k_leads=False,           # the public code's rule: a k-lead input uses lead embeddings 0..k-1
        remat=False,                   # recompute activations in the backward pass: less memory, more compute
    ))
    for field in SIZE_FIELDS:
        config.model[field] = placeholder(int)  # scratch only: set to override the preset
    config.data = ml_collections.ConfigDict(dict(
        dir="",                        # a stmem-prepare output; empty: built-in synthetic data in <workdir>/data
        task="",                       # a task of the manifest; empty: its only task
        leads="12",                    # 12 | limb | 1 (lead I) | a lead name | comma-separated names (I,II,V1)
        label_fraction=1.0,            # stratified by record, seeded by train.seed
        train_split="train",
        val_split="validation",        # model selection; a dataset without it uses the last state
        test_split="test",
        crop_samples=2250,
        augment=True,                  # RandAugment (finetune, scratch)
        bandpass=False,
        shuffle_buffer=10_000,
        feature_cache="",              # linprobe feature cache; empty: <workdir>/features
        synthetic_records=2_000,
        synthetic_seed=0,
        workers=2,
    ))
    config.train = ml_collections.ConfigDict(dict(
        seed=0,
        batch_size=64,                 # global; lowered to the number of training examples when fewer
        epochs=100,
        num_steps=0,                   # > 0 overrides epochs
        warmup_epochs=5,
        warmup_steps=-1,               # >= 0 overrides warmup_epochs
        base_lr=1e-3,                  # x global batch / 256
        lr=0.0,                        # > 0 sets the peak learning rate directly
        min_lr=0.0,
        weight_decay=0.05,
        b1=0.9,
        b2=0.999,
        clip_norm=0.0,
        layer_decay=0.75,              # finetune only
    ))
    config.eval = ml_collections.ConfigDict(dict(
        batch_size=64,
        crops=3,
        every_steps=0,                 # 0: every epoch, at most max_evals times
        max_evals=50,
        select="loss",                 # loss | auroc: the validation metric that picks the test checkpoint
    ))
    config.mesh = ml_collections.ConfigDict(dict(fsdp=1))
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=1, asynchronous=True))
    config.log = ml_collections.ConfigDict(dict(every_steps=50))
    config.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=1, process_id=0,
                                                        auto=False))
    return config


def parse_leads(text: str) -> str | tuple[str, ...]:
    """``"I,II,V1"`` -> ``("I", "II", "V1")``; set names and single lead names stay as they are."""
    return tuple(x.strip() for x in text.split(",")) if "," in text else text.strip()


def load_encoder(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The classification encoder (no head) and its variables from pre-trained weights at ``path``."""
    if os.path.isfile(path):
        from stmem_jax.convert import load_torch_checkpoint

        model, variables = load_torch_checkpoint(path)
    else:
        candidates = (path, os.path.join(path, "encoder"), os.path.join(path, "model"))
        found = next((c for c in candidates if os.path.isfile(os.path.join(c, MODEL_FILE))), path)
        model, variables = load_model(found)
    if model_config(model)["kind"] in PRETRAINING_KINDS:
        return pretrained_encoder(model, variables)
    return model.clone(num_classes=0), {"params": {"encoder": variables["params"]["encoder"]}}


def build_classifier(config: ml_collections.ConfigDict, num_classes: int, lead_ids: tuple[int, ...]
                     ) -> tuple[nn.Module, Any]:
    """The run's classifier and the pre-trained encoder parameters (None for scratch)."""
    m = config.model
    fields = dict(num_classes=num_classes, drop_path=m.drop_path, dropout=m.dropout, dtype=jnp.dtype(m.dtype),
                  remat=m.remat)
    if config.mode == "scratch":
        if config.init:
            raise ValueError("mode 'scratch' trains from random weights: leave init empty")
        sizes = {k: m[k] for k in SIZE_FIELDS if m.get(k) is not None}
        if m.kind == "st_mem":
            sizes["first_k_leads"] = m.first_k_leads
        model = create_model(f"{m.kind}_classifier", m.preset, seq_len=config.data.crop_samples, **fields, **sizes)
        encoder_params = None
    else:
        if not config.init:
            raise ValueError(f"mode {config.mode!r} needs pre-trained weights: set init (or use mode 'scratch')")
        encoder, variables = load_encoder(config.init)
        if hasattr(encoder, "first_k_leads"):
            fields["first_k_leads"] = m.first_k_leads
        model = encoder.clone(**fields)
        encoder_params = variables["params"]["encoder"]
    if getattr(model, "token_axis", None) is not None and lead_ids != tuple(range(model.num_leads)):
        raise ValueError(f"MTAE/MLAE encoders need all {model.num_leads} leads in the standard order; "
                         f"lead setting {config.data.leads!r} is not possible with them")
    if model.seq_len != config.data.crop_samples:
        raise ValueError(f"the encoder takes {model.seq_len}-sample inputs but data.crop_samples is "
                         f"{config.data.crop_samples}")
    return model, encoder_params


def classification_loss(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
    """Sigmoid binary cross-entropy (multi-label) or softmax cross-entropy (class indices)."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def crop_probabilities(logits: jax.Array, multilabel: bool) -> jax.Array:
    """(B, crops, K) logits -> (B, K) class probabilities averaged over the crops."""
    logits = logits.astype(jnp.float32)
    return (jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)).mean(axis=1)


def crop_outputs(model: nn.Module, params: Any, series: jax.Array, lead_ids: tuple[int, ...]) -> jax.Array:
    """The model on every crop of (B, crops, C, T): (B, crops, K) logits, or features without a head."""
    batch, crops = series.shape[:2]
    out = model.apply({"params": params}, series.reshape(batch * crops, *series.shape[2:]), leads=lead_ids)
    return out.reshape(batch, crops, -1)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, multilabel: bool,
                    lead_ids: tuple[int, ...]):
    """One optimizer step; dropout / drop-path keys from ``fold_in(key, step)``. A non-finite loss or
    gradient leaves the state unchanged and is recorded in ``bad_step``."""

    def step(state: TrainState, series: jax.Array, labels: jax.Array, key: jax.Array):
        def loss_fn(params):
            logits = model.apply({"params": params}, series, leads=lead_ids, train=True,
                                 rngs={"dropout": jax.random.fold_in(key, state.step)})
            return classification_loss(logits, labels, multilabel)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
        return (TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state), bad_step),
                {"loss": loss, "grad_norm": grad_norm})

    return step


def _gather_strings(values: np.ndarray) -> np.ndarray:
    """This host's byte strings (at most 256 long) concatenated over the processes, in process order."""
    if jax.process_count() == 1:
        return values
    fixed = np.asarray(values, dtype="S256")
    rows = multihost_utils.process_allgather(fixed.view(np.uint8).reshape(len(fixed), 256), tiled=True)
    return np.ascontiguousarray(rows).view("S256").ravel()


def predict(fn, params: Any, input_config: InputConfig, mesh) -> dict[str, np.ndarray]:
    """``fn(params, series)`` over an evaluation split, gathered from every device and process:
    ``outputs``, ``record_id`` (str), ``window`` and (with a task) ``label``, each valid example
    exactly once (in shard order per process, processes in turn)."""
    parts: dict[str, list] = {}
    for batch in global_batches(input_config, mesh, data_axis=meshlib.BATCH_AXES):
        device = {"outputs": fn(params, batch["series"]), "valid": batch["valid"], "window": batch["window"]}
        if "label" in batch:
            device["label"] = batch["label"]
        for k, v in multihost_utils.process_allgather(device, tiled=True).items():
            parts.setdefault(k, []).append(np.asarray(v))
        parts.setdefault("record_id", []).append(_gather_strings(batch["record_id"]))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    valid = out.pop("valid")
    out = {k: v[valid] for k, v in out.items()}
    out["record_id"] = np.array([r.decode() for r in out["record_id"]])
    return out


@dataclasses.dataclass
class Task:
    """What a run learns: the task, its classes and the resolved data settings."""

    data_dir: str
    name: str
    classes: list[str]
    multilabel: bool
    leads: str | tuple[str, ...]
    lead_ids: tuple[int, ...]

    def input(self, config: ml_collections.ConfigDict, split: str, training: bool, batch_size: int,
              label_fraction: float = 1.0) -> InputConfig:
        d = config.data
        return InputConfig(data_dir=self.data_dir, split=split, batch_size=batch_size, training=training,
                           leads=self.leads, crop_samples=d.crop_samples, task=self.name,
                           label_fraction=label_fraction, augment=training and d.augment, bandpass=d.bandpass,
                           seed=config.train.seed, shuffle_buffer=d.shuffle_buffer, eval_crops=config.eval.crops)


def resolve_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    """The data directory (synthetic when empty), the task and its classes, and the lead selection."""
    name = config.data.task
    if not config.data.dir and name not in SYNTHETIC_TASKS:
        raise ValueError(f"task {name!r} needs data.dir (a stmem-prepare output); the built-in synthetic data "
                         f"has the tasks {', '.join(SYNTHETIC_TASKS)}")
    data_dir = config.data.dir or synthetic_data(config, workdir)
    manifest = read_manifest(data_dir)
    tasks = manifest.get("tasks") or {}
    if not name:
        if len(tasks) != 1:
            raise ValueError(f"{data_dir} has the tasks {sorted(tasks) or 'none'}: choose one with data.task")
        (name,) = tasks
    if name not in tasks:
        raise ValueError(f"task {name!r} not in {data_dir} (it has: {', '.join(sorted(tasks)) or 'none'})")
    classes = list(tasks[name]["classes"])
    if not classes:
        raise ValueError(f"task {name!r} of {data_dir} has no classes")
    leads = parse_leads(config.data.leads)
    lead_ids = lead_indices_for(InputConfig(data_dir=data_dir, leads=leads), manifest)
    return Task(data_dir, name, classes, bool(tasks[name]["multilabel"]), leads, lead_ids)


def _num_examples(input_config: InputConfig) -> int:
    """Examples of the split that the config uses (after the label fraction)."""
    return steps_per_epoch(dataclasses.replace(input_config, training=False, batch_size=1), process_count=1)


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


def _schedule(config: ml_collections.ConfigDict, batch: int, per_epoch: int):
    total = config.train.num_steps or config.train.epochs * per_epoch
    warmup = config.train.warmup_steps if config.train.warmup_steps >= 0 else config.train.warmup_epochs * per_epoch
    peak = peak_learning_rate(config.train.lr, config.train.base_lr, batch)
    every = config.eval.every_steps or max(per_epoch, math.ceil(total / config.eval.max_evals))
    return total, schedule(peak, total, warmup, config.train.min_lr), every


def _optimizer(config: ml_collections.ConfigDict, lr_schedule, params: Any, layer_decay: float, depth: int):
    t = config.train
    return adamw(lr_schedule, params, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, clip_norm=t.clip_norm,
                 layer_decay=layer_decay, depth=depth)


def _score(config: ml_collections.ConfigDict, val: dict) -> float:
    """Lower is better: the validation loss or minus its macro AUROC."""
    return val["loss"] if config.eval.select == "loss" else -val["auroc"]


def _scalars_of(result: dict) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, float)}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) one downstream run; returns its test metrics record (``test_metrics.json``)."""
    d = config.distributed
    meshlib.initialize_distributed(d.coordinator_address, d.num_processes, d.process_id, d.auto)
    if config.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {config.mode!r}")
    if config.eval.select not in ("loss", "auroc"):
        raise ValueError(f"eval.select must be 'loss' or 'auroc', got {config.eval.select!r}")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    if os.path.isfile(os.path.join(workdir, METRICS_FILE)):
        with open(os.path.join(workdir, METRICS_FILE)) as f:
            return json.load(f)
    task = resolve_task(config, workdir)
    model, encoder_params = build_classifier(config, len(task.classes), task.lead_ids)
    mesh = meshlib.make_mesh(config.mesh.fsdp)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))
    has_val = config.data.val_split in read_manifest(task.data_dir)["splits"]
    run = _linear_probe if config.mode == "linprobe" else _train_end_to_end
    params, selected, val = run(config, workdir, task, model, encoder_params, mesh, has_val)
    return _finish(config, workdir, task, model, params, selected, val, mesh)


def _evaluate_fn(model: nn.Module, task: Task):
    """Jitted ``(params, (B, crops, C, T)) -> (B, K)`` crop-averaged probabilities."""
    return jax.jit(lambda p, s: crop_probabilities(crop_outputs(model, p, s, task.lead_ids), task.multilabel))


def _train_end_to_end(config, workdir, task, model, encoder_params, mesh, has_val):
    """finetune / scratch: the whole classifier trains on augmented random crops."""
    fraction = config.data.label_fraction
    train_input = task.input(config, config.data.train_split, True, config.train.batch_size, fraction)
    batch = _train_batch(config, _num_examples(train_input))
    train_input = dataclasses.replace(train_input, batch_size=batch)
    per_epoch = steps_per_epoch(train_input)
    total, lr_schedule, eval_every = _schedule(config, batch, per_epoch)
    layer_decay = config.train.layer_decay if config.mode == "finetune" else 1.0
    init_key, dropout_key = jax.random.split(jax.random.key(config.train.seed))
    example = jnp.zeros((1, len(task.lead_ids), config.data.crop_samples), jnp.float32)

    def init_state(encoder):
        params = model.init({"params": init_key, "dropout": init_key}, example, leads=task.lead_ids)["params"]
        if encoder is not None:
            params = {**params, "encoder": encoder}
        tx = _optimizer(config, lr_schedule, params, layer_decay, model.depth)
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jnp.full((), -1, jnp.int32))

    abstract = jax.eval_shape(init_state, encoder_params)
    tx = _optimizer(config, lr_schedule, abstract.params, layer_decay, model.depth)
    shardings = TrainState(meshlib.replicated(mesh), meshlib.state_shardings(mesh, abstract.params),
                           meshlib.state_shardings(mesh, abstract.opt_state), meshlib.replicated(mesh))
    checkpoints = Checkpoints(workdir, config.checkpoint.keep, asynchronous=config.checkpoint.asynchronous,
                              best_metric="val_score" if has_val else None)
    start = checkpoints.latest_step()
    if start is None:
        state = jax.jit(init_state, out_shardings=shardings)(encoder_params)
        start = 0
    else:
        state = checkpoints.restore(start, abstract_with_shardings(abstract, shardings))
        print(f"resumed from step {start} in {workdir}", flush=True)
    step_fn = jax.jit(make_train_step(model, tx, task.multilabel, task.lead_ids),
                      in_shardings=(shardings, meshlib.batch_sharding(mesh), meshlib.batch_sharding(mesh),
                                    meshlib.replicated(mesh)),
                      out_shardings=(shardings, meshlib.replicated(mesh)), donate_argnums=0)
    probs_fn = _evaluate_fn(model, task)
    val_input = task.input(config, config.data.val_split, False, config.eval.batch_size)
    reporter = Reporter(workdir, total, per_epoch, batch)
    pending: list[dict] = []
    step = start
    batches = global_batches(train_input, mesh, data_axis=meshlib.BATCH_AXES, start_step=start) \
        if start < total else (item for item in ())
    try:
        reporter.reset_clock(step)
        while step < total:
            item = next(batches)
            state, metrics = step_fn(state, item["series"], item["label"], dropout_key)
            step += 1
            pending.append(metrics)
            if step % config.log.every_steps == 0 or step == total:
                raise_if_bad(state)
                values = [scalars(m) for m in pending]
                pending = []
                reporter.log(step, {"loss": float(np.mean([v["loss"] for v in values])),
                                    "lr": float(lr_schedule(step - 1)), "grad_norm": values[-1]["grad_norm"]})
            if has_val and (step % eval_every == 0 or step == total):
                val = _validation(task, predict(probs_fn, state.params, val_input, mesh))
                reporter.write(step, _scalars_of(val), prefix="validation")
                checkpoints.save_best(step, state, {"val_score": _score(config, val)})
                reporter.reset_clock(step)
            if step % config.checkpoint.every_steps == 0 or step == total:
                raise_if_bad(state)
                checkpoints.save(step, state)
        checkpoints.wait()
        selected = checkpoints.best_step() if has_val else None
        if selected is not None and selected != step:
            state = checkpoints.restore(selected, abstract_with_shardings(abstract, shardings), best=True)
    finally:
        batches.close()
        reporter.close()
        checkpoints.close()
    val = _validation(task, predict(probs_fn, state.params, val_input, mesh)) if has_val else None
    return state.params, int(selected if selected is not None else step), val


def _validation(task: Task, predictions: dict) -> dict:
    return metrics_lib.classification_metrics(predictions["label"], predictions["outputs"], task.multilabel,
                                              task.classes)


def _encoder_checksum(params: Any) -> str:
    values = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(params))]
    return repr([float(np.abs(v).sum()) for v in values])


def cached_features(config, workdir: str, task: Task, encoder: nn.Module, encoder_params: Any, mesh,
                    split: str, label_fraction: float = 1.0) -> dict[str, np.ndarray]:
    """Pooled features (N, crops, W) of every evaluation crop of ``split``, with labels and ids; read from
    the cache when an earlier run computed them with the same encoder weights and data settings."""
    input_config = task.input(config, split, False, config.eval.batch_size, label_fraction)
    key = json.dumps({"input": dataclasses.asdict(input_config), "encoder": model_config(encoder),
                      "weights": _encoder_checksum(encoder_params)}, sort_keys=True, default=str)
    directory = config.data.feature_cache or os.path.join(workdir, "features")
    path = os.path.join(directory, f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz")
    found = np.asarray(os.path.isfile(path))
    if jax.process_count() > 1:
        found = multihost_utils.process_allgather(found)
    if np.all(found):
        with np.load(path) as data:
            return dict(data)
    fn = jax.jit(lambda p, s: crop_outputs(encoder, p, s, task.lead_ids))
    params = jax.device_put({"encoder": encoder_params}, meshlib.replicated(mesh))
    features = predict(fn, params, input_config, mesh)
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}.npz"
        np.savez(tmp, **features)
        os.replace(tmp, path)
    return features


def _linear_probe(config, workdir, task, model, encoder_params, mesh, has_val):
    """linprobe: the head trains on cached features of the frozen encoder (every process the same)."""
    encoder = model.clone(num_classes=0)
    features = {split: cached_features(config, workdir, task, encoder, encoder_params, mesh, split, fraction)
                for split, fraction in [(config.data.train_split, config.data.label_fraction)]
                + ([(config.data.val_split, 1.0)] if has_val else [])}
    train_set = features[config.data.train_split]
    n, crops, width = train_set["outputs"].shape
    x = train_set["outputs"].reshape(n * crops, width)
    y = np.repeat(train_set["label"], crops, axis=0)
    batch = min(config.train.batch_size, len(x))
    per_epoch = len(x) // batch
    total, lr_schedule, eval_every = _schedule(config, batch, per_epoch)

    def head_logits(head, feats):
        return model.apply({"params": {"head": head}}, feats, method=lambda m, f: m.head(f))

    head = model.init(jax.random.key(config.train.seed), jnp.zeros((1, width)),
                      method=lambda m, f: m.head(f))["params"]["head"]
    tx = _optimizer(config, lr_schedule, {"head": head}, 1.0, model.depth)

    @jax.jit
    def step_fn(params, opt_state, xb, yb):
        loss, grads = jax.value_and_grad(
            lambda p: classification_loss(head_logits(p["head"], xb), yb, task.multilabel))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    probs_fn = jax.jit(lambda head, feats: crop_probabilities(head_logits(head, feats), task.multilabel))
    params = {"head": head}
    opt_state = tx.init(params)
    rng = np.random.default_rng(config.train.seed)
    reporter = Reporter(workdir, total, per_epoch, batch)
    best, losses = None, []
    try:
        for step in range(1, total + 1):
            if (step - 1) % per_epoch == 0:
                order = rng.permutation(len(x))
            index = order[(step - 1) % per_epoch * batch:][:batch]
            params, opt_state, loss = step_fn(params, opt_state, x[index], y[index])
            losses.append(loss)
            if step % config.log.every_steps == 0 or step == total:
                loss = float(np.mean(jax.device_get(losses)))
                if not np.isfinite(loss):
                    raise NonFiniteLoss(f"non-finite loss between steps {step - len(losses) + 1} and {step}")
                reporter.log(step, {"loss": loss, "lr": float(lr_schedule(step - 1))})
                losses = []
            if has_val and (step % eval_every == 0 or step == total):
                val_set = features[config.data.val_split]
                probs = np.asarray(probs_fn(params["head"], val_set["outputs"]))
                val = _validation(task, {**val_set, "outputs": probs})
                reporter.write(step, _scalars_of(val), prefix="validation")
                if best is None or _score(config, val) < _score(config, best[2]):
                    best = (jax.device_get(params["head"]), step, val)
    finally:
        reporter.close()
    head, selected, val = best if best is not None else (jax.device_get(params["head"]), total, None)
    return jax.device_put({"encoder": encoder_params, "head": head}, meshlib.replicated(mesh)), selected, val


def _finish(config, workdir, task, model, params, selected, val, mesh) -> dict[str, Any]:
    """Test predictions of the selected parameters (on the mesh); writes the model (all processes take
    part), the predictions and the metrics (process 0)."""
    test_input = task.input(config, config.data.test_split, False, config.eval.batch_size)
    predictions = predict(_evaluate_fn(model, task), params, test_input, mesh)
    test = _validation(task, predictions)
    record = {"task": task.name, "mode": config.mode, "init": config.init, "data_dir": task.data_dir,
              "leads": config.data.leads, "label_fraction": config.data.label_fraction, "seed": config.train.seed,
              "classes": task.classes, "multilabel": task.multilabel, "selected_step": selected,
              "select": config.eval.select if val is not None else "last", "validation": val, "test": test}
    save_model(os.path.join(workdir, "model"), model, {"params": params}, overwrite=True,
               metadata={"task": task.name, "classes": task.classes, "multilabel": task.multilabel,
                         "leads": config.data.leads, "selected_step": selected})
    if jax.process_index() == 0:
        np.savez(os.path.join(workdir, "test_predictions.npz"), record_id=predictions["record_id"],
                 window=predictions["window"], label=predictions["label"], probs=predictions["outputs"],
                 classes=np.array(task.classes))
        columns = ["task", "mode", "leads", "label_fraction", "seed", "selected_step"]
        values = {k: record[k] for k in columns} | {"num_examples": test["num_examples"]} | _scalars_of(test)
        with open(os.path.join(workdir, "test_metrics.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(values))
            writer.writeheader()
            writer.writerow(values)
        tmp = os.path.join(workdir, METRICS_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, os.path.join(workdir, METRICS_FILE))
    multihost_utils.sync_global_devices("downstream run finished")
    return record


def main(argv=None) -> None:
    def run(config, workdir):
        start = time.time()
        record = train(config, workdir)
        summary = {"workdir": os.path.abspath(workdir), "selected_step": record["selected_step"],
                   **{f"test_{k}": v for k, v in _scalars_of(record["test"]).items()},
                   "wall_s": round(time.time() - start, 1)}
        print("summary: " + json.dumps(summary), flush=True)

    run_config_command(run, argv, example="configs/downstream/ptbxl.py:st_mem",
                       workdir_help="run directory (checkpoints, logs, metrics); a run resumes from it")


if __name__ == "__main__":
    main()
