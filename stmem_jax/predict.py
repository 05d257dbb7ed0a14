"""``stmem-predict``: a fine-tuned classifier's class probabilities for a folder of ECG files or a
prepared split, as a CSV.

    stmem-predict --model runs/ptbxl_finetune --files /data/my_ecgs --output preds.csv
    stmem-predict --model runs/ptbxl_finetune --data /data/ptbxl --split test --output preds.csv

``--model`` is a stmem-finetune workdir (or its ``model/``). The model's lead setting and recipe
(rate, window, band filter, crop length, evaluation crops: saved with it) are applied: a 1-lead
model reads lead I of 12-lead files, and a file lacking the model's leads is left out, named with
the reason. Each row is one file (its first usable window; every window with ``--per-window``) or
one example of the split: ``record_id`` (a file's path relative to the folder), ``window``, then
one column per class, the probabilities averaged over the evaluation crops.

Exit status: 0, or 3 when files were left out (named on stderr with their reasons), 1 on an error.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import sys
from typing import Any

import jax
import numpy as np

from stmem_jax import infer
from stmem_jax import mesh as meshlib
from stmem_jax.core.leads import lead_indices, parse_leads
from stmem_jax.core.recipe import Recipe
from stmem_jax.core.shards import read_manifests
from stmem_jax.core.signal import EXIT_SKIPPED
from stmem_jax.model_dir import MODEL_FILE


def load_classifier(path: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The classifier saved by stmem-finetune at ``path`` (its workdir or ``model/``), its variables,
    and what was saved with it: ``classes``, ``multilabel``, ``leads``, ``recipe`` (a Recipe)."""
    directory = infer.model_directory(path, ("model",))
    with open(os.path.join(directory, MODEL_FILE)) as f:
        info = json.load(f).get("metadata") or {}
    if "classes" not in info:
        raise ValueError(f"{directory} is not a fine-tuned classifier (no classes saved with it); "
                         f"stmem-predict takes a stmem-finetune workdir")
    model, variables = infer.load(directory)
    info = dict(info, leads=parse_leads(str(info.get("leads") or "12")))
    # classifiers saved before the recipe was recorded: the default recipe at the model's crop length
    info["recipe"] = Recipe(**info["recipe"]) if "recipe" in info else Recipe(crop_samples=model.seq_len)
    return model, variables, info


def split_input(data_dir: str, split: str, info: dict[str, Any], batch_size: int):
    """The evaluation input of a prepared split that shows the model what it was trained on (its
    recipe's filter placement and resampling: a folder prepared otherwise is an error naming it); an
    error naming the folder when its rate, window or band filter cannot give that."""
    from stmem_jax.data.pipeline import InputConfig, model_recipe  # TensorFlow: only to read a split

    recipe: Recipe = info["recipe"]
    input_config = InputConfig(data_dir=data_dir, split=split, batch_size=batch_size, training=False,
                               leads=info["leads"], crop_samples=recipe.crop_samples, eval_crops=recipe.eval_crops,
                               filter=recipe.filter_on, resample=recipe.resample)
    for directory, manifest in read_manifests(data_dir).items():
        data = Recipe.of_manifest(manifest)
        if (data.fs, data.window_s) != (recipe.fs, recipe.window_s):
            raise ValueError(f"{directory} holds {data.window_s:g} s windows at {data.fs} Hz; the model was trained "
                             f"on {recipe.window_s:g} s at {recipe.fs} Hz")
        seen = model_recipe(dataclasses.replace(input_config, data_dir=directory))
        band = (seen.highpass_hz, seen.lowpass_hz, seen.filter_order)
        if band != (recipe.highpass_hz, recipe.lowpass_hz, recipe.filter_order):
            raise ValueError(f"{directory} gives the band filter (high-pass, low-pass, order) {band}; the model was "
                             f"trained with {(recipe.highpass_hz, recipe.lowpass_hz, recipe.filter_order)}")
    return input_config


def predict_split(model, variables, info, data_dir: str, split: str, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Probabilities of every example of a prepared split (``outputs``, ``record_id``, ``window``)."""
    mesh = meshlib.make_mesh()
    params = jax.device_put(variables["params"], meshlib.replicated(mesh))
    fn = infer.probabilities_fn(model, lead_indices(info["leads"]), info["multilabel"])
    return infer.predict(fn, params, split_input(data_dir, split, info, batch_size), mesh)


def predict_files(model, variables, info, folder: str, batch_size: int = 64, per_window: bool = False,
                  pattern: str | None = None) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """Probabilities of the ECG files under ``folder``, and the files left out with their reasons."""
    fn = infer.probabilities_fn(model, lead_indices(info["leads"]), info["multilabel"])
    recipe = info["recipe"]
    return infer.file_outputs(fn, variables["params"], folder, info["leads"], recipe, crop_samples=recipe.crop_samples,
                              per_window=per_window, batch_size=batch_size, pattern=pattern)


def write_csv(path: str, out: dict[str, np.ndarray], classes: list[str]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["record_id", "window", *classes])
        for record_id, window, probs in zip(out["record_id"], out["window"], out["outputs"]):
            writer.writerow([record_id, int(window), *(f"{p:.6f}" for p in probs)])
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stmem-predict", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a stmem-finetune workdir (or its model/ directory)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--files", help="a folder of ECG files in any supported format, searched recursively")
    source.add_argument("--data", help="a stmem-prepare output, or several (comma-separated)")
    p.add_argument("--split", default="test", help="--data: the split to predict")
    p.add_argument("--pattern", help="--files: only files whose name or relative path matches this glob")
    p.add_argument("--per-window", action="store_true", help="--files: one row per 10 s window, not per file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--output", required=True, help="CSV file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = p.parse_args(argv)
    if os.path.exists(args.output) and not args.overwrite:
        print(f"stmem-predict: error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    from stmem_jax.cli import guarded, use_compilation_cache  # cli imports the trainers: only the command needs it

    use_compilation_cache()
    def body():
        skipped = []
        model, variables, info = load_classifier(args.model)
        if args.data:
            out = predict_split(model, variables, info, args.data, args.split, args.batch_size)
        else:
            out, skipped = predict_files(model, variables, info, args.files, args.batch_size, args.per_window,
                                         args.pattern)
        if jax.process_index() == 0:
            write_csv(args.output, out, info["classes"])
            print(f"wrote {len(out['record_id'])} rows x {len(info['classes'])} classes to {args.output}")
            if skipped:
                print(f"{len(skipped)} file(s) left out (reasons above)")
        return EXIT_SKIPPED if skipped else 0

    return guarded("stmem-predict", body)

if __name__ == "__main__":
    sys.exit(main())
