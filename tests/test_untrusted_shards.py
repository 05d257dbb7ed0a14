"""Prepared folders from elsewhere (issue 33): a manifest cannot make the training input or
stmem-overlap read outside its folder, a damaged manifest is an error naming it, and an example
whose stored scale is not finite is an error naming its shard, never NaN inputs."""

import json
import os
import re

import jax
import numpy as np
import pytest
import tensorflow as tf

from data_fixtures import write_dataset
from stmem_jax import overlap
from stmem_jax.core import shards as fmt
from stmem_jax.data.pipeline import InputConfig, global_batches, make_dataset

RNG_BYTES = np.random.default_rng(33).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def dataset(path, **kwargs):
    return write_dataset(path, num_records=8, splits={"train": 1.0}, tasks={}, shards_per_split=2, **kwargs)


def edit_manifest(folder, change):
    path = os.path.join(folder, fmt.MANIFEST)
    manifest = json.load(open(path))
    change(manifest)
    json.dump(manifest, open(path, "w"))
    return path


def test_shard_names_that_lead_outside_the_folder_are_an_error_naming_the_manifest(tmp_path):
    folder, elsewhere = dataset(tmp_path / "data"), dataset(tmp_path / "elsewhere")
    shard = os.path.join(folder, "train-00001-of-00002")
    os.remove(shard)
    os.symlink(os.path.join(elsewhere, "train-00001-of-00002"), shard)  # a link to another folder's shard
    where = re.escape(os.path.join(folder, "manifest.json"))
    with pytest.raises(ValueError, match=where + ": shard of split 'train': path 'train-00001-of-00002' leads outside"):
        make_dataset(InputConfig(folder, batch_size=2))
    with pytest.raises(ValueError, match=where + ".*leads outside"):
        overlap.compare(folder, elsewhere)

    os.remove(shard)
    os.makedirs(tmp_path / "up")
    path = edit_manifest(folder, lambda m: m["splits"].update({"../up/train": m["splits"].pop("train")}))
    with pytest.raises(ValueError, match=re.escape(path) + r": shard of split '../up/train': .* leads outside"):
        overlap.compare(folder, elsewhere)
    with pytest.raises(ValueError, match=re.escape(path) + ".*leads outside"):
        make_dataset(InputConfig(folder, split="../up/train", batch_size=2))


@pytest.mark.parametrize("damage", ["empty", "truncated", "random bytes", "not an object", "bad shard lengths"])
def test_a_damaged_manifest_is_an_error_naming_it(tmp_path, damage):
    folder = dataset(tmp_path / "data")
    path = os.path.join(folder, fmt.MANIFEST)
    text = open(path, "rb").read()
    content = {"empty": b"", "truncated": text[:len(text) // 2], "random bytes": RNG_BYTES, "not an object": b"[1, 2]",
               "bad shard lengths": None}[damage]
    if content is None:
        edit_manifest(folder, lambda m: m["splits"]["train"].update(shard_lengths="12"))
    else:
        open(path, "wb").write(content)
    with pytest.raises(ValueError, match=re.escape(path)):
        make_dataset(InputConfig(folder, batch_size=2))
    with pytest.raises(ValueError, match=re.escape(path)):
        overlap.compare(folder, folder)


def with_scale(folder, shard, index, scale):
    """Rewrites example ``index`` of ``shard`` with a damaged ``scale`` (as a bit flip or another tool might)."""
    path = os.path.join(folder, shard)
    examples = [tf.train.Example.FromString(s) for s in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    examples[index].features.feature["scale"].float_list.value[:] = [scale]
    fmt.write_shard(path, [e.SerializeToString() for e in examples])
    return path


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_an_example_with_a_non_finite_scale_is_an_error_naming_its_shard(tmp_path, scale):
    folder = dataset(tmp_path / "data")
    path = with_scale(folder, "train-00001-of-00002", 1, scale)
    config = InputConfig(folder, batch_size=2, training=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(path)):
        for _ in make_dataset(config).as_numpy_iterator():
            pass
    with pytest.raises(ValueError, match=re.escape(f"shard {path}: example 1 has a non-finite scale")):
        for _ in global_batches(config, jax.make_mesh((1,), ("data",))):
            pass
    with pytest.raises(ValueError, match=re.escape(f"shard {path}: example 1 has a non-finite scale")):
        overlap.compare(folder, folder)  # no fingerprints.npz: fingerprinted from the shards
