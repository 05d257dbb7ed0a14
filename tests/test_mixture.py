"""Several prepared folders read as one: proportions, epochs, seeds, resume, evaluation, tasks and
the manifest agreement check."""

import dataclasses
import json
import os
from collections import Counter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stmem_jax.core.shards import data_dirs  # noqa: E402
from stmem_jax.data.pipeline import InputConfig, folders, make_dataset, steps_per_epoch  # noqa: E402
from stmem_jax.data.tasks import resolve_task  # noqa: E402
from tests.data_fixtures import write_dataset  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two folders of 36 and 12 training examples (2 and 1 shards), other records and seeds."""
    root = tmp_path_factory.mktemp("mix")
    a = write_dataset(root / "a", num_records=36, splits={"train": 1.0}, shards_per_split=2, source="a")
    b = write_dataset(root / "b", num_records=16, splits={"train": 0.75, "validation": 0.25}, shards_per_split=1,
                      seed=1, source="b")
    return a, b


def drawn(config, steps, **kw):
    ds = make_dataset(config, process_index=kw.pop("process_index", 0), process_count=kw.pop("process_count", 1), **kw)
    return list((ds.take(steps) if steps else ds).as_numpy_iterator())


def keys(batch, dirs):
    return [(dirs[s], r.decode(), int(w)) for s, r, w in zip(batch["source"], batch["record_id"], batch["window"])]


def test_an_epoch_at_default_weights_is_one_pass_over_the_union(pair):
    config = InputConfig(",".join(pair), batch_size=8, shuffle_buffer=16)
    assert data_dirs(config.data_dir) == pair and folders(config) == pair
    steps = steps_per_epoch(config, process_count=1)
    assert steps == (36 + 12) // 8
    epochs = [[k for b in drawn(config, 2 * steps)[e * steps:(e + 1) * steps] for k in keys(b, pair)]
              for e in range(2)]
    for epoch in epochs:
        assert len(set(epoch)) == len(epoch) == 48  # every example of both folders exactly once
        assert Counter(k[0] for k in epoch) == {pair[0]: 36, pair[1]: 12}
    assert epochs[0] != epochs[1]
    first = [k[0] for k in epochs[0]]
    assert pair[1] in first[:16] and pair[0] in first[-16:], "the folders are interleaved, not concatenated"


def test_weights_set_each_folders_share_and_repeat_the_smaller_folder(pair):
    config = InputConfig(pair, batch_size=8, shuffle_buffer=16, weights=(1.0, 1.0))
    steps = steps_per_epoch(config, process_count=1)
    batches = drawn(config, 4 * steps)
    for e in range(4):  # 24 of each per epoch: folder b (12) is passed twice, a (36) partly
        epoch = [k for b in batches[e * steps:(e + 1) * steps] for k in keys(b, pair)]
        counts = Counter(k[0] for k in epoch)
        assert counts == {pair[0]: 24, pair[1]: 24}
        assert Counter(Counter(k for k in epoch if k[0] == pair[1]).values()) == {2: 12}
    prefix = Counter(s for b in batches[:5] for s in b["source"])  # 40 examples: about half each
    assert 12 <= prefix[0] <= 28
    only_a = InputConfig(pair, batch_size=8, shuffle_buffer=16, weights=(1.0, 0.0))
    assert {k[0] for b in drawn(only_a, steps) for k in keys(b, pair)} == {pair[0]}
    with pytest.raises(ValueError, match="one non-negative weight per folder"):
        make_dataset(InputConfig(pair, batch_size=8, weights=(1.0,)))


def test_mixture_is_reproducible_from_the_seed_and_resumes_at_any_step(pair):
    config = InputConfig(pair, batch_size=8, shuffle_buffer=16, seed=5, weights=(2.0, 1.0))
    full = drawn(config, 9)
    assert keys(drawn(dataclasses.replace(config, seed=6), 1)[0], pair) != keys(full[0], pair)
    for k in (0, 4, 7):
        for a, b in zip(full[k:], drawn(config, 9 - k, start_step=k), strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_processes_split_every_folder(pair):
    config = InputConfig(pair, batch_size=4, shuffle_buffer=8)
    steps = steps_per_epoch(config, process_count=2)
    seen = [[k for b in drawn(config, steps, process_index=i, process_count=2) for k in keys(b, pair)]
            for i in range(2)]
    assert not set(seen[0]) & set(seen[1])
    assert all({k[0] for k in s} == set(pair) for s in seen)


def test_evaluation_reads_the_folders_that_have_the_split_one_after_the_other(pair):
    config = InputConfig(pair, split="validation", batch_size=3, training=False)
    assert folders(config) == (pair[1],)
    out = drawn(config, None)
    valid = np.concatenate([b["valid"] for b in out])
    assert valid.sum() == 4 and set(np.concatenate([b["source"] for b in out])[valid]) == {0}
    with pytest.raises(ValueError, match=rf"split 'validation' not in {pair[0]} \(it has: train\)"):
        make_dataset(InputConfig(pair, split="validation", batch_size=2))
    test = InputConfig(pair, split="train", batch_size=5, training=False)
    sources = np.concatenate([b["source"] for b in drawn(test, None)])
    assert list(sources[sources >= 0]) == [0] * 36 + [1] * 12


def test_a_task_over_several_folders_has_the_union_of_their_classes(tmp_path):
    a = write_dataset(tmp_path / "a", num_records=8, splits={"train": 1.0},
                      tasks={"rhythm": {"classes": ["AFIB", "SR"], "multilabel": False}})
    b = write_dataset(tmp_path / "b", num_records=8, splits={"train": 1.0}, seed=1,
                      tasks={"rhythm": {"classes": ["SBRAD", "SR"], "multilabel": False}})
    task = resolve_task(f"{a},{b}", "", "12")
    assert task.classes == ["AFIB", "SBRAD", "SR"] and not task.multilabel
    config = InputConfig((a, b), batch_size=4, training=False, task="rhythm")
    labels = {}
    for batch in drawn(config, None):
        for s, r, label, v in zip(batch["source"], batch["record_id"], batch["label"], batch["valid"]):
            if v:
                labels[(s, r.decode())] = task.classes[label]
    for s, directory in enumerate((a, b)):
        stored = json.load(open(os.path.join(directory, "manifest.json")))["tasks"]["rhythm"]["classes"]
        assert {c for (src, _), c in labels.items() if src == s} <= set(stored)


def test_folders_prepared_with_other_recipes_are_refused_naming_both_and_the_field(pair, tmp_path):
    other = write_dataset(tmp_path / "500hz", num_records=4, splits={"train": 1.0}, sampling_rate=500,
                          window_samples=5000)
    with pytest.raises(ValueError, match=rf"{pair[0]} and {other} disagree on the sampling rate"):
        make_dataset(InputConfig((pair[0], other), batch_size=2))
    raw = write_dataset(tmp_path / "raw", num_records=4, splits={"train": 1.0}, filtered=False)
    with pytest.raises(ValueError, match=rf"{pair[0]} and {raw} disagree on the filter"):
        steps_per_epoch(InputConfig(f"{pair[0]},{raw}", batch_size=2))
    with pytest.raises(ValueError, match="names a folder twice"):
        data_dirs(f"{pair[0]},{pair[0]}")
