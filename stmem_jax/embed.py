"""``stmem-embed``: pooled encoder features (N, W) of a prepared split or of a folder of WFDB records.

    stmem-embed --model runs/pretrain --data /data/ptbxl --split test --output test_features.npz
    stmem-embed --model ST-MEM_encoder.pth --wfdb /data/my_ecgs --output features.npz

``--model`` is anything stmem-finetune accepts as ``init`` (a stmem-pretrain workdir, a saved
model directory, a downstream workdir's ``model/``, a public ``.pth`` file). Every 10 s window
gives the mean of the features of its evaluation crops (3 equally spaced crops, each z-scored).
WFDB records are read, resampled to 250 Hz, band-filtered and cut into 10 s windows as
stmem-prepare does. The ``.npz`` holds ``features`` (N, W), ``record_id``, ``window`` and, where
known, labels: ``label`` and ``classes`` with ``--task`` (a prepared split; single-label tasks keep
only the examples with one class) or ``labels`` (';'-joined, a WFDB folder).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

import jax
import numpy as np

from stmem_jax.data.format import read_manifest
from stmem_jax.data.pipeline import InputConfig
from stmem_jax.data.transforms import crop_starts
from stmem_jax.leads import LEAD_NAMES, lead_indices
from stmem_jax.train import mesh as meshlib
from stmem_jax.train.downstream import crop_outputs, load_encoder, parse_leads, predict


def _features_fn(encoder, lead_ids):
    """Jitted ``(params, (B, crops, C, T)) -> (B, W)``: features averaged over the crops."""
    return jax.jit(lambda p, s: crop_outputs(encoder, p, s, lead_ids).mean(axis=1))


def embed_split(encoder, variables, data_dir: str, split: str, leads="12", task: str | None = None,
                batch_size: int = 64, crops: int = 3) -> dict[str, np.ndarray]:
    """Features of every example of a prepared split, read by the input pipeline."""
    lead_ids = lead_indices(leads)
    input_config = InputConfig(data_dir=data_dir, split=split, batch_size=batch_size, training=False, leads=leads,
                               crop_samples=encoder.seq_len, task=task, eval_crops=crops)
    mesh = meshlib.make_mesh()
    params = jax.device_put(variables["params"], meshlib.replicated(mesh))
    out = predict(_features_fn(encoder, lead_ids), params, input_config, mesh)
    out["features"] = out.pop("outputs")
    if task:
        out["classes"] = np.array(read_manifest(data_dir)["tasks"][task]["classes"])
    return out


def wfdb_windows(folder: str, leads="12", labels_csv: str | None = None, crops: int = 3, crop_samples: int = 2250
                 ) -> Iterator[tuple[str, int, np.ndarray, str]]:
    """(record id, window index, z-scored crops (crops, C, crop_samples), ';'-joined labels) of every
    usable window of the WFDB records under ``folder``; unusable records are reported on stderr."""
    from data_prep.records import RecordError
    from data_prep.signals import Processing, make_windows
    from data_prep.sources.wfdb_folder import WFDBFolder

    wanted = [LEAD_NAMES[i] for i in lead_indices(leads)]
    processing = Processing()
    source = WFDBFolder(folder, {"labels": labels_csv})
    records, skipped = source.list_records()
    for skip in skipped:
        print(f"skipped {skip.record_id}: {skip.reason}", file=sys.stderr)
    for record in records:
        try:
            windows, _ = make_windows(source.load(record), wanted, processing)
        except RecordError as error:
            print(f"skipped {record.record_id}: {error}", file=sys.stderr)
            continue
        for index, window in windows:
            x = np.stack([window[:, s:s + crop_samples] for s in crop_starts(window.shape[1], crop_samples, crops)])
            mean = x.mean(axis=(1, 2), keepdims=True)
            std = x.std(axis=(1, 2), keepdims=True)
            x = np.divide(x - mean, std, out=np.zeros_like(x), where=std > 0)
            yield record.record_id, index, x.astype(np.float32), ";".join(record.labels["label"])


def embed_wfdb(encoder, variables, folder: str, leads="12", labels_csv: str | None = None, batch_size: int = 64,
               crops: int = 3) -> dict[str, np.ndarray]:
    """Features of every window of the WFDB records under ``folder`` (one process, fixed-size batches)."""
    fn = _features_fn(encoder, lead_indices(leads))
    params = variables["params"]
    ids, windows, labels, features, pending = [], [], [], [], []

    def flush():
        x = np.stack(pending)
        padded = np.concatenate([x, np.zeros((batch_size - len(x), *x.shape[1:]), x.dtype)])
        features.append(np.asarray(fn(params, padded))[:len(x)])
        pending.clear()

    for record_id, index, x, names in wfdb_windows(folder, leads, labels_csv, crops, encoder.seq_len):
        ids.append(record_id)
        windows.append(index)
        labels.append(names)
        pending.append(x)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not ids:
        raise ValueError(f"no usable WFDB record under {folder}")
    out = {"features": np.concatenate(features), "record_id": np.array(ids), "window": np.array(windows, np.int32)}
    if any(labels):
        out["labels"] = np.array(labels)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stmem-embed", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="pre-trained or fine-tuned weights (workdir, model directory, .pth)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a stmem-prepare output")
    source.add_argument("--wfdb", help="a folder of WFDB records (searched recursively)")
    p.add_argument("--split", default="test", help="--data: the split to embed")
    p.add_argument("--task", help="--data: add this task's labels")
    p.add_argument("--labels", help="--wfdb: CSV with columns record,label (labels separated by ';')")
    p.add_argument("--leads", default="12", help="12, limb, 1, a lead name or comma-separated names")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crops", type=int, default=3, help="evaluation crops per window (features averaged)")
    p.add_argument("--output", required=True, help=".npz file to write")
    args = p.parse_args(argv)
    encoder, variables = load_encoder(args.model)
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
