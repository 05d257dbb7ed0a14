"""``stmem-embed``: pooled encoder features (N, W) of a prepared split or of a folder of WFDB records.

    stmem-embed --model runs/pretrain --data /data/ptbxl --split test --output test_features.npz
    stmem-embed --model ST-MEM_encoder.pth --wfdb /data/my_ecgs --output features.npz

``--model`` is anything stmem-finetune accepts as ``init`` (a stmem-pretrain workdir, a saved
model directory, a downstream workdir's ``model/``, a public ``.pth`` file). Every 10 s window
gives the mean of the features of its evaluation crops (equally spaced, each z-scored). WFDB
records go through the recipe as stmem-prepare applies it (``stmem_jax.core.recipe``: resampled,
band-filtered, cut into windows). The ``.npz`` holds ``features`` (N, W), ``record_id``, ``window``
and, where known, labels: ``label`` and ``classes`` with ``--task`` (a prepared split; single-label
tasks keep only the examples with one class) or ``labels`` (';'-joined, a WFDB folder).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator

import jax
import numpy as np

from stmem_jax import infer
from stmem_jax import mesh as meshlib
from stmem_jax.core import recipe as recipe_lib
from stmem_jax.core.leads import LEAD_NAMES, lead_indices, parse_leads
from stmem_jax.core.recipe import Recipe
from stmem_jax.core.shards import read_manifests
from stmem_jax.core.signal import RecordError
from stmem_jax.core.wfdb import list_folder, read_signal
from stmem_jax.data.pipeline import InputConfig, folders, task_classes


def embed_split(encoder, variables, data_dir: str, split: str, leads="12", task: str | None = None,
                batch_size: int = 64, crops: int | None = None) -> dict[str, np.ndarray]:
    """Features of every example of a prepared split (of one folder, or of several one after the
    other), read by the input pipeline (crops: the dataset's recipe unless given)."""
    manifest = next(iter(read_manifests(data_dir).values()))
    input_config = InputConfig(data_dir=data_dir, split=split, batch_size=batch_size, training=False, leads=leads,
                               crop_samples=encoder.seq_len, task=task,
                               eval_crops=crops or Recipe.of_manifest(manifest).eval_crops)
    mesh = meshlib.make_mesh()
    params = jax.device_put(variables["params"], meshlib.replicated(mesh))
    out = infer.predict(infer.features_fn(encoder, lead_indices(leads)), params, input_config, mesh)
    out["features"] = out.pop("outputs")
    out["source"] = np.array(folders(input_config))[out["source"]]  # the folder of each row
    if task:
        out["classes"] = np.array(task_classes(read_manifests(data_dir), task)[0])
    return out


def wfdb_windows(folder: str, leads="12", labels_csv: str | None = None, recipe: Recipe = Recipe(),
                 crop_samples: int | None = None, crops: int | None = None
                 ) -> Iterator[tuple[str, int, np.ndarray, str]]:
    """(record id, window index, z-scored crops (crops, C, crop_samples), ';'-joined labels) of every
    usable window of the WFDB records under ``folder``; unusable records are reported on stderr."""
    wanted = [LEAD_NAMES[i] for i in lead_indices(leads)]
    records, skipped = list_folder(folder, labels_csv)
    for record_id, _, reason in skipped:
        print(f"skipped {record_id}: {reason}", file=sys.stderr)
    for record in records:
        try:
            windows, _ = recipe_lib.make_windows(read_signal(record.base), wanted, recipe)
        except RecordError as error:
            print(f"skipped {record.record_id}: {error}", file=sys.stderr)
            continue
        for index, window in windows:
            x = recipe_lib.zscore(recipe_lib.crops(window, crop_samples or recipe.crop_samples,
                                                   crops or recipe.eval_crops))
            yield record.record_id, index, x, ";".join(record.labels)


def embed_wfdb(encoder, variables, folder: str, leads="12", labels_csv: str | None = None, batch_size: int = 64,
               crops: int | None = None) -> dict[str, np.ndarray]:
    """Features of every window of the WFDB records under ``folder`` (one process, fixed-size batches,
    windows read as they are needed)."""
    ids, index, labels = [], [], []

    def inputs():
        for record_id, window, x, names in wfdb_windows(folder, leads, labels_csv, crop_samples=encoder.seq_len,
                                                         crops=crops):
            ids.append(record_id)
            index.append(window)
            labels.append(names)
            yield x

    examples = inputs()
    first = next(examples, None)
    if first is None:
        raise ValueError(f"no usable WFDB record under {folder}")
    features = infer.map_batches(infer.features_fn(encoder, lead_indices(leads)), variables["params"],
                                 itertools.chain([first], examples), batch_size)
    out = {"features": features, "record_id": np.array(ids), "window": np.array(index, np.int32)}
    if any(labels):
        out["labels"] = np.array(labels)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stmem-embed", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="pre-trained or fine-tuned weights (workdir, model directory, .pth)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a stmem-prepare output, or several (comma-separated)")
    source.add_argument("--wfdb", help="a folder of WFDB records (searched recursively)")
    p.add_argument("--split", default="test", help="--data: the split to embed")
    p.add_argument("--task", help="--data: add this task's labels")
    p.add_argument("--labels", help="--wfdb: CSV with columns record,label (labels separated by ';')")
    p.add_argument("--leads", default="12", help="12, limb, 1, a lead name or comma-separated names")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crops", type=int, help="evaluation crops per window (features averaged); default: the recipe's")
    p.add_argument("--output", required=True, help=".npz file to write")
    args = p.parse_args(argv)
    encoder, variables = infer.load_encoder(args.model)
    leads = parse_leads(args.leads)
    if args.data:
        out = embed_split(encoder, variables, args.data, args.split, leads, args.task, args.batch_size, args.crops)
    else:
        out = embed_wfdb(encoder, variables, args.wfdb, leads, args.labels, args.batch_size, args.crops)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        np.savez(args.output, **out)
        print(f"wrote {out['features'].shape[0]} x {out['features'].shape[1]} features to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
