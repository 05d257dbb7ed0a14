"""``stmem-embed``: pooled encoder features (N, W) of a prepared split or of a folder of ECG files.

    stmem-embed --model runs/pretrain --data /data/ptbxl --split test --output test_features.npz
    stmem-embed --model ST-MEM_encoder.pth --files /data/my_ecgs --output features.npz

``--model`` is anything stmem-finetune accepts as ``init`` (a stmem-pretrain workdir, a saved
model directory, a downstream workdir's ``model/``, a public ``.pth`` file). The model gets the
input it was trained on (the recipe saved with it: rate, crop length, evaluation crops; a CPC
encoder pre-trained at 100 Hz gets 100 Hz crops, from a prepared split resampled in the
pipeline). Every window gives the mean of the features of its evaluation crops (equally spaced,
each z-scored). Files (any format ``stmem_jax.core.ecgfile`` reads) go through that recipe as
stmem-prepare applies it (``stmem_jax.core.recipe``: resampled, band-filtered, cut into windows);
each gives its first usable window, or every window with ``--per-window``, and its path relative
to the folder as record id.
The ``.npz`` holds ``features`` (N, W), ``record_id``, ``window`` and, where known, labels:
``label`` and ``classes`` with ``--task`` (a prepared split; single-label tasks keep only the
examples with one class) or ``labels`` (';'-joined, with ``--labels``).

Exit status: 0, or 3 when files were left out (named on stderr with their reasons), 1 on an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import jax
import numpy as np

from stmem_jax import infer, methods
from stmem_jax import mesh as meshlib
from stmem_jax.core import fileio
from stmem_jax.core.label_table import lookup, read_label_table
from stmem_jax.core.leads import lead_indices, parse_leads
from stmem_jax.core.recipe import Recipe, authors_for
from stmem_jax.core.shards import read_manifests
from stmem_jax.core.signal import EXIT_SKIPPED


def embed_split(encoder, variables, data_dir: str, split: str, leads="12", task: str | None = None,
                batch_size: int = 64, crops: int | None = None, recipe: Recipe | None = None) -> dict[str, np.ndarray]:
    """Features of every example of a prepared split (of one folder, or of several one after the
    other), read by the input pipeline as the encoder's ``recipe`` says (default: the authors' at the
    encoder's crop length; ``infer.input_recipe`` reads a saved model's; ``infer.split_input`` says
    how a folder prepared otherwise serves): at its rate (resampled in the pipeline where the data's
    differs), crop length and evaluation crops (``crops`` overrides)."""
    from stmem_jax.data.pipeline import folders, task_classes  # TensorFlow: only to read a split

    recipe = recipe or authors_for(encoder)
    recipe = dataclasses.replace(recipe, eval_crops=crops or recipe.eval_crops)
    input_config = infer.split_input(data_dir, split, recipe, leads, batch_size, task=task)
    mesh = meshlib.make_mesh()
    params = jax.device_put(variables["params"], meshlib.replicated(mesh))
    out = infer.predict(infer.features_fn(encoder, lead_indices(leads)), params, input_config, mesh)
    out["features"] = out.pop("outputs")
    out["source"] = np.array(folders(input_config))[out["source"]]  # the folder of each row
    if task:
        out["classes"] = np.array(task_classes(read_manifests(data_dir), task)[0])
    return out


def embed_files(encoder, variables, folder: str, leads="12", labels_csv: str | None = None, batch_size: int = 64,
                crops: int | None = None, per_window: bool = False, pattern: str | None = None,
                recipe: Recipe | None = None) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """Features of the ECG files under ``folder`` (any format ``core.ecgfile`` reads), each through
    the encoder's ``recipe`` (default: the authors' at the encoder's crop length; ``infer.input_recipe``
    reads a saved model's): one row per file (its first usable window) or per window, the file's
    relative path as ``record_id``; and the files left out with their reasons."""
    recipe = recipe or authors_for(encoder)
    recipe = dataclasses.replace(recipe, eval_crops=crops or recipe.eval_crops)
    out, skipped = infer.file_outputs(infer.features_fn(encoder, lead_indices(leads)), variables["params"], folder,
                                      leads, recipe, crop_samples=encoder.seq_len, per_window=per_window,
                                      batch_size=batch_size, pattern=pattern)
    out["features"] = out.pop("outputs")
    if labels_csv:
        table = read_label_table(labels_csv, "file")
        out["labels"] = np.array([";".join((lookup(table, r) or ([], ""))[0]) for r in out["record_id"]])
    return out, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="stmem-embed", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="pre-trained or fine-tuned weights (workdir, model directory, .pth)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a stmem-prepare output, or several (comma-separated)")
    source.add_argument("--files", help="a folder of ECG files in any supported format (DICOM, HL7 aECG, MUSE, EDF, "
                                        "CardioSoft XML, WFDB, ...), searched recursively")
    p.add_argument("--split", default="test", help="--data: the split to embed")
    p.add_argument("--task", help="--data: add this task's labels")
    p.add_argument("--labels", help="--files: CSV with columns file,label (labels separated by ';')")
    p.add_argument("--pattern", help="--files: only files whose name or relative path matches this glob")
    p.add_argument("--per-window", action="store_true", help="--files: one row per 10 s window, not per file")
    p.add_argument("--leads", default="12", help="12, limb, 1, a lead name or comma-separated names")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crops", type=int, help="evaluation crops per window (features averaged); default: the recipe's")
    p.add_argument("--method", help="a method of your own (its module path), imported so that its saved models load")
    p.add_argument("--output", required=True, help=".npz file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = p.parse_args(argv)
    if args.crops is not None and args.crops < 1:
        p.error(f"--crops must be at least 1, got {args.crops}")
    if fileio.exists(args.output) and not args.overwrite:
        print(f"stmem-embed: error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    from stmem_jax.cli import guarded, use_compilation_cache  # cli imports the trainers: only the command needs it

    use_compilation_cache()
    leads = parse_leads(args.leads)

    def body():
        skipped = []
        if args.method:
            methods.get(args.method)  # registers its model kinds
        encoder, variables = infer.load_encoder(args.model)
        recipe = infer.input_recipe(args.model, encoder)
        if args.data:
            out = embed_split(encoder, variables, args.data, args.split, leads, args.task, args.batch_size, args.crops,
                              recipe)
        else:
            out, skipped = embed_files(encoder, variables, args.files, leads, args.labels, args.batch_size, args.crops,
                                       args.per_window, args.pattern, recipe)
        if jax.process_index() == 0:
            fileio.makedirs(fileio.dirname(fileio.absolute(args.output)))
            with fileio.open(args.output, "wb") as f:
                np.savez(f, **out)
            print(f"wrote {out['features'].shape[0]} x {out['features'].shape[1]} features to {args.output}")
            if skipped:
                print(f"{len(skipped)} file(s) left out (reasons above)")
        return EXIT_SKIPPED if skipped else 0

    return guarded("stmem-embed", body)

if __name__ == "__main__":
    sys.exit(main())
