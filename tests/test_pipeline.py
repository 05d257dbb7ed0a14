import dataclasses
import glob
import json
import os
import re
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy import signal as sps  # noqa: E402

from stmem_jax.data import labels as labels_lib  # noqa: E402
from stmem_jax.data.pipeline import (InputConfig, global_batches, lead_indices_for, make_dataset,  # noqa: E402
                                     steps_per_epoch)
from stmem_jax.core.recipe import Recipe, crop_starts, resample  # noqa: E402
from stmem_jax.data.transforms import band_filter  # noqa: E402
from tests.data_fixtures import write_dataset  # noqa: E402

T = 2250
UNFILTERED = Recipe(highpass_hz=None, lowpass_hz=None)  # the stored window as it is


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """60 records (every 10th without a ``rhythm`` class, the next with two); 3 shards per split;
    validation is odd-sized."""
    return write_dataset(tmp_path_factory.mktemp("ds") / "ecg", num_records=60, unlabeled_every=10,
                         splits={"train": 0.6, "validation": 0.15, "test": 0.25}, shards_per_split=3)


def reference(directory, split):
    """{(record_id, window): (float64 signal (leads, samples), labels)} read with plain protobuf + NumPy."""
    manifest = json.load(open(os.path.join(directory, "manifest.json")))
    shape = (len(manifest["leads"]), manifest["window_samples"])
    out = {}
    for path in sorted(glob.glob(os.path.join(directory, f"{split}-*"))):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            f = tf.train.Example.FromString(raw).features.feature
            signal = np.frombuffer(f["signal"].bytes_list.value[0], np.int16).reshape(shape)
            key = (f["record_id"].bytes_list.value[0].decode(), f["window"].int64_list.value[0])
            labels = {k[7:]: [v.decode() for v in f[k].bytes_list.value] for k in f if k.startswith("labels/")}
            out[key] = (signal * np.float64(f["scale"].float_list.value[0]), labels)
    return out


def z(x):
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)


def batches(config, n=None, **kw):
    ds = make_dataset(config, process_index=kw.pop("process_index", 0), process_count=kw.pop("process_count", 1), **kw)
    return list((ds.take(n) if n else ds).as_numpy_iterator())


def keys(batch):
    valid = batch.get("valid", np.ones(len(batch["record_id"]), bool))
    return [(r.decode(), int(w)) for r, w, v in zip(batch["record_id"], batch["window"], valid) if v]


def test_transform_helpers():
    assert crop_starts(2500, 2250, 3) == (0, 125, 250)
    assert crop_starts(2250, 2250, 3) == (0, 0, 0)
    with pytest.raises(ValueError, match="longer"):
        crop_starts(2000, 2250, 3)


def test_training_crops_and_zscore_match_numpy(data):
    ref = reference(data, "train")
    config = InputConfig(data, batch_size=6, leads=("V1", "I", "aVF"), shuffle_buffer=16)
    starts = set()
    for batch in batches(config, 2):
        assert batch["series"].shape == (6, 3, T) and batch["series"].dtype == np.float32
        for key, series in zip(keys(batch), batch["series"]):
            x = ref[key][0][[6, 0, 5]]
            start = int(np.argmin([np.abs(z(x[:, s:s + T])[:, :50] - series[:, :50]).max() for s in range(251)]))
            np.testing.assert_allclose(series, z(x[:, start:start + T]), atol=2e-5)
            starts.add(start)
    assert len(starts) > 3, "crops must be random"


def test_evaluation_crops_zscore_leads_and_labels_match_numpy(data):
    ref = reference(data, "validation")
    config = InputConfig(data, split="validation", batch_size=4, training=False, task="superdiagnostic",
                         leads="limb")
    manifest = json.load(open(os.path.join(data, "manifest.json")))
    classes = manifest["tasks"]["superdiagnostic"]["classes"]
    seen = 0
    for batch in batches(config):
        assert batch["series"].shape == (4, 3, 6, T) and batch["label"].dtype == np.float32
        for key, series, label in zip(keys(batch), batch["series"], batch["label"]):
            x, names = ref[key][0][:6], ref[key][1]["superdiagnostic"]
            for crop, s in zip(series, (0, 125, 250)):
                np.testing.assert_allclose(crop, z(x[:, s:s + T]), atol=2e-5)
            np.testing.assert_array_equal(label, [c in names for c in classes])
            seen += 1
    assert seen == len(ref)


def test_lead_selection_rows_and_order(tmp_path):
    stored = ["V6", "V5", "aVF", "II", "I", "V1"]
    data = write_dataset(tmp_path / "odd", num_records=4, leads=stored, tasks={}, splits={"test": 1.0},
                         shards_per_split=1)
    ref = reference(data, "test")
    for leads, rows, indices in [(("I", "V1"), [4, 5], (0, 6)), ("1", [4], (0,)), (("II",), [3], (1,)),
                                 (("V6", "II", "aVF"), [0, 3, 2], (11, 1, 5))]:
        config = InputConfig(data, split="test", batch_size=4, training=False, leads=leads)
        assert lead_indices_for(config) == indices
        batch = batches(config)[0]
        for key, series in zip(keys(batch), batch["series"]):
            np.testing.assert_allclose(series[0], z(ref[key][0][rows, :T]), atol=2e-5)
    with pytest.raises(ValueError, match=r"lead\(s\) aVR, V2 not in .*it has V6, V5"):
        make_dataset(InputConfig(data, split="test", leads=("aVR", "I", "V2")))
    with pytest.raises(ValueError, match="aVL not in"):
        lead_indices_for(InputConfig(data, leads="limb"))


def test_evaluation_sees_every_example_once_across_processes(data):
    total = json.load(open(os.path.join(data, "manifest.json")))["splits"]["validation"]["examples"]
    assert total % 2 == 1
    for count, batch_size in [(1, 4), (2, 4), (4, 8)]:  # 4 processes > 3 shards: examples are split
        config = InputConfig(data, split="validation", batch_size=batch_size, training=False)
        steps = steps_per_epoch(config, process_count=count)
        seen = []
        for index in range(count):
            host = batches(config, process_index=index, process_count=count)
            assert len(host) == steps
            for b in host:
                assert len(b["valid"]) == batch_size // count
                padding = ~b["valid"]
                assert np.all(b["record_id"][padding] == b"") and np.all(b["window"][padding] == -1)
                assert np.all(b["series"][padding] == 0)
                seen += keys(b)
        assert len(seen) == len(set(seen)) == total
        assert count * steps * batch_size // count > total, "the odd-sized split needs padding"


def test_training_shares_are_disjoint_and_within_each_process_share(data):
    for count in (2, 4):  # 3 shards: split by shard for 2 processes, by example for 4
        evaluation = InputConfig(data, batch_size=2 * count, training=False)
        config = InputConfig(data, batch_size=2 * count, shuffle_buffer=8)
        steps = steps_per_epoch(config, process_count=count)
        seen = []
        for index in range(count):
            share = {k for b in batches(evaluation, process_index=index, process_count=count) for k in keys(b)}
            host = batches(config, 3 * steps, process_index=index, process_count=count)
            for epoch in range(3):
                epoch_keys = [k for b in host[epoch * steps:(epoch + 1) * steps] for k in keys(b)]
                assert len(set(epoch_keys)) == len(epoch_keys) == 2 * steps  # no repeats within an epoch
                assert set(epoch_keys) <= share
            seen.append({k for b in host for k in keys(b)})
        assert sum(map(len, seen)) == len(set().union(*seen))


def test_single_label_task_drops_unlabeled_examples(data):
    ref = reference(data, "train")
    usable = {k for k, (_, lab) in ref.items() if len(lab["rhythm"]) == 1}
    assert 0 < len(usable) < len(ref)
    config = InputConfig(data, batch_size=5, training=False, task="rhythm")
    seen = {k: int(label) for b in batches(config) for k, label in zip(keys(b), b["label"])}
    assert set(seen) == usable
    classes = ["AFIB", "SBRAD", "SR"]
    assert all(classes[seen[k]] == ref[k][1]["rhythm"][0] for k in seen)
    train = InputConfig(data, batch_size=5, task="rhythm", shuffle_buffer=8)
    assert steps_per_epoch(train, process_count=1) == len(usable) // 5
    assert {k for b in batches(train, 6) for k in keys(b)} <= usable


def test_same_seed_same_batches_and_resume_at_any_step(data):
    config = InputConfig(data, batch_size=8, task="rhythm", augment=True, shuffle_buffer=16, seed=3)
    steps = steps_per_epoch(config, process_count=1)
    assert steps == 3
    full = batches(config, 8)
    other = batches(dataclasses.replace(config, seed=4), 1)
    assert not np.array_equal(full[0]["series"], other[0]["series"]) and keys(full[0]) != keys(other[0])
    assert keys(full[0]) != keys(full[steps]), "each epoch is shuffled anew"
    for k in (0, 4, 7):  # k = 0: the same seed gives the same batches
        resumed = batches(config, 8 - k, start_step=k)
        for a, b in zip(full[k:], resumed, strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_label_fraction_subsets_are_stratified_and_stable(tmp_path):
    data = write_dataset(tmp_path / "big", num_records=300, splits={"train": 1.0}, shards_per_split=2)
    ref = reference(data, "train")

    def subset(task, fraction, seed=0):
        config = InputConfig(data, batch_size=16, training=False, task=task, label_fraction=fraction, seed=seed)
        return {k for b in batches(config) for k in keys(b)}

    single = subset("rhythm", 0.1)
    per_class = [sum(ref[k][1]["rhythm"] == [c] for k in single) for c in ("AFIB", "SBRAD", "SR")]
    assert per_class == [10, 10, 10]
    assert subset("rhythm", 0.1) == single
    assert subset("rhythm", 0.1, seed=1) != single
    tiny = subset("rhythm", 0.01)
    assert {ref[k][1]["rhythm"][0] for k in tiny} == {"AFIB", "SBRAD", "SR"} and len(tiny) == 3
    multi = subset("superdiagnostic", 0.01)
    assert set().union(*(ref[k][1]["superdiagnostic"] for k in multi)) == {"CD", "HYP", "MI", "NORM", "STTC"}
    assert len(multi) <= 10
    assert steps_per_epoch(InputConfig(data, batch_size=6, task="rhythm", label_fraction=0.1), process_count=1) == 5


def test_stratified_subset_keeps_records_whole_and_covers_late_classes():
    ids = ["a", "a", "b", "c", "d", "e"]
    names = [("X",), ("X",), ("X", "Z"), ("Y",), ("Y",), ("X",)]
    mask = labels_lib.stratified_subset(ids, names, np.ones(6, bool), 0.01, seed=0)
    chosen = {i for i, m in zip(ids, mask) if m}
    assert mask[0] == mask[1], "all windows of a record go together"
    assert "b" in chosen, "the only record with class Z must be added"
    assert len(chosen) == 3


def test_band_filter_of_a_window_and_of_each_crop_equals_scipy_sosfiltfilt(tmp_path):
    """The TF band filter equals ``scipy.signal.sosfiltfilt`` (high-pass, then low-pass) of whatever it
    is given, to 1e-5 mV: a window, a crop, a stack of crops (the spec's per-crop filter)."""
    from native_fixtures import ecg_like

    t = np.arange(2500) / 250
    x = ecg_like(np.random.default_rng(0), 12, 2500, 250) + 0.4 * np.sin(2 * np.pi * 0.3 * t) + 0.1 * np.sin(
        2 * np.pi * 60 * t) + 0.5  # baseline wander, mains hum, an offset
    high = sps.butter(5, 0.67, "highpass", fs=250, output="sos")
    low = sps.butter(5, 40.0, "lowpass", fs=250, output="sos")
    for signal in (x, x[:, 17:17 + T], np.stack([x[:, s:s + T] for s in (0, 125, 250)])):
        expected = sps.sosfiltfilt(low, sps.sosfiltfilt(high, signal))
        got = band_filter(tf.constant(signal, tf.float32), Recipe()).numpy()
        assert np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()


def test_the_pipeline_filters_each_crop_or_the_window_where_the_recipe_says(tmp_path):
    """``filter="crop"`` (the authors'): every evaluation crop and the training crop is filtered on its
    own after cropping, then z-scored; ``window``: the stored window before cropping; a folder filtered
    at preparation is refused for either."""
    data = write_dataset(tmp_path / "raw", num_records=3, tasks={}, splits={"test": 1.0}, shards_per_split=1,
                         filtered=False)
    ref = reference(data, "test")
    high = sps.butter(5, 0.67, "highpass", fs=250, output="sos")
    low = sps.butter(5, 40.0, "lowpass", fs=250, output="sos")

    def filtered(x):
        return sps.sosfiltfilt(low, sps.sosfiltfilt(high, x))

    batch = batches(InputConfig(data, split="test", batch_size=3, training=False, filter="crop"))[0]
    for key, series in zip(keys(batch), batch["series"]):
        for crop, s in zip(series, (0, 125, 250)):
            np.testing.assert_allclose(crop, z(filtered(ref[key][0][:, s:s + T])), atol=2e-5)
        assert np.abs(series[2] - z(filtered(ref[key][0])[:, 250:])).max() > 1e-2  # not a crop of the filtered window
    training = batches(InputConfig(data, split="test", batch_size=3, filter="crop", shuffle_buffer=4), 1)[0]
    for key, series in zip(keys(training), training["series"]):
        candidates = filtered(np.stack([ref[key][0][:, s:s + T] for s in range(251)]))  # every crop start
        candidates = (candidates - candidates.mean((1, 2), keepdims=True)) / candidates.std((1, 2), keepdims=True)
        start = int(np.argmin(np.abs(candidates - series).max((1, 2))))
        np.testing.assert_allclose(series, candidates[start], atol=2e-5)
    batch = batches(InputConfig(data, split="test", batch_size=3, training=False, filter="window"))[0]
    for key, series in zip(keys(batch), batch["series"]):
        np.testing.assert_allclose(series[2], z(filtered(ref[key][0])[:, 250:]), atol=1e-4)
    stored_filtered = write_dataset(tmp_path / "f", num_records=2, tasks={}, splits={"train": 1.0})
    for place in ("crop", "window"):
        with pytest.raises(ValueError, match=r"f was prepared with a band filter at preparation \(recipe stmem_jax\), "
                                             r"but this run's recipe expects no filter at preparation"):
            make_dataset(InputConfig(stored_filtered, batch_size=1, filter=place))


def test_bad_inputs_give_clear_errors(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_dataset(InputConfig(str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        make_dataset(InputConfig(str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="split 'dev' not in"):
        make_dataset(InputConfig(data, split="dev"))
    with pytest.raises(ValueError, match="task 'form' not in"):
        make_dataset(InputConfig(data, task="form"))
    with pytest.raises(ValueError, match="needs a task"):
        make_dataset(InputConfig(data, label_fraction=0.1))
    with pytest.raises(ValueError, match="not a positive multiple of the 3 processes"):
        make_dataset(InputConfig(data, batch_size=8), process_index=0, process_count=3)
    with pytest.raises(ValueError, match="fewer than the per-process batch"):
        make_dataset(InputConfig(data, batch_size=64), process_index=0, process_count=1)

    broken = tmp_path / "broken"
    write_dataset(broken, num_records=12, splits={"train": 1.0}, shards_per_split=3)
    shard = broken / "train-00001-of-00003"
    shard.write_bytes(shard.read_bytes()[:5000] + b"garbage" * 100)
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match=re.escape(f"cannot read shard {shard}")):
        for _ in global_batches(InputConfig(str(broken), batch_size=2, shuffle_buffer=4), mesh):
            pass
    with pytest.raises(ValueError, match=re.escape(f"cannot read shard {shard}")):
        make_dataset(InputConfig(str(broken), batch_size=2, task="rhythm"))
    os.remove(broken / "train-00002-of-00003")
    with pytest.raises(FileNotFoundError, match="train-00002-of-00003"):
        make_dataset(InputConfig(str(broken)))


def test_a_shard_cut_at_an_example_boundary_is_an_error_without_a_task_too(tmp_path):
    """Pre-training reads no labels; a shard shorter than its manifest entry would shift epochs and
    resume positions, so the shard lengths are checked from the record headers."""
    cut = tmp_path / "cut"
    write_dataset(cut, num_records=12, splits={"train": 1.0}, shards_per_split=3)
    shard = cut / "train-00001-of-00003"
    data = shard.read_bytes()
    last = int.from_bytes(data[:8], "little") + 16  # the first example's size on disk
    shard.write_bytes(data[last:])
    with pytest.raises(ValueError, match=re.escape(f"shard {shard} holds") + ".*the manifest says"):
        make_dataset(InputConfig(str(cut), batch_size=2))
    shard.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=re.escape(f"cannot read shard {shard}: it ends inside example")):
        make_dataset(InputConfig(str(cut), batch_size=2))


@pytest.mark.slow
def test_global_batches_on_8_devices(data):
    script = textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec
        from stmem_jax.data.pipeline import InputConfig, global_batches, make_dataset
        mesh = jax.make_mesh((8,), ("data",))
        config = InputConfig({data!r}, split="validation", batch_size=16, training=False, task="rhythm")
        batch = next(iter(global_batches(config, mesh)))
        local = next(make_dataset(config, process_index=0, process_count=1).as_numpy_iterator())
        for key in ("series", "label", "valid"):
            array = batch[key]
            assert isinstance(array, jax.Array) and array.sharding == NamedSharding(mesh, PartitionSpec("data"))
            assert len(array.addressable_shards) == 8 and len({{s.device for s in array.addressable_shards}}) == 8
            assert all(s.data.shape[0] == 2 for s in array.addressable_shards)
            np.testing.assert_array_equal(np.asarray(array), local[key])
        assert isinstance(batch["record_id"], np.ndarray) and list(batch["record_id"]) == list(local["record_id"])
        try:
            global_batches(InputConfig({data!r}, batch_size=12), mesh)
        except ValueError as e:
            assert "not divisible by the 8 devices" in str(e), e
        else:
            raise AssertionError("batch 12 on 8 devices must fail")
        print("OK")
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def test_numpy_recipe_and_tensorflow_ops_agree():
    from stmem_jax.core import recipe
    from stmem_jax.data.transforms import fixed_crops, zscore

    rng = np.random.default_rng(3)
    window = (0.3 * rng.standard_normal((12, 2500)) + 0.1).astype(np.float32)
    for count in (1, 2, 3):
        got = zscore(fixed_crops(tf.constant(window), T, count)).numpy()
        np.testing.assert_allclose(got, recipe.zscore(recipe.crops(window, T, count)), atol=2e-5)
    flat = np.ones((12, 2500), np.float32)
    assert not zscore(fixed_crops(tf.constant(flat), T, 3)).numpy().any()
    assert not recipe.zscore(recipe.crops(flat, T, 3)).any()


def test_one_evaluation_crop_is_centred_in_the_pipeline_and_the_api(data):
    from stmem_jax import api

    assert crop_starts(2500, 2250, 1) == (125,)
    ref = reference(data, "test")
    batch = batches(InputConfig(data, split="test", batch_size=4, training=False, eval_crops=1))[0]
    for key, series in zip(keys(batch), batch["series"]):
        window = ref[key][0]
        np.testing.assert_allclose(series[0], z(window[:, 125:125 + T]), atol=2e-5)
        np.testing.assert_allclose(series[0], api.model_inputs(window, fs=250, crops=1, recipe=UNFILTERED)[0, 0], atol=2e-5)


def test_views_two_crops_segments_patients_and_resampling_match_numpy(data):
    """The inputs of the contrastive methods: two independently cropped views, two adjacent segments
    with the patient, and windows resampled in the pipeline (as ``core.recipe.resample``)."""
    ref = reference(data, "train")
    config = InputConfig(data, batch_size=6, leads=("I", "II"), shuffle_buffer=16,
                         views=("view1", "view2", "segment1", "segment2", "patient"), segment_samples=1000)
    batch = batches(config, 1)[0]
    assert "series" not in batch and batch["patient"].dtype == np.int32
    differ = 0
    for key, v1, v2, s1, s2 in zip(keys(batch), batch["view1"], batch["view2"], batch["segment1"], batch["segment2"]):
        signal = ref[key][0][[0, 1]]
        starts = {name: [s for s in range(signal.shape[1] - v.shape[1] + 1)
                         if np.allclose(z(signal[:, s:s + v.shape[1]]), v, atol=1e-4)]
                  for name, v in (("view1", v1), ("view2", v2), ("segment1", s1), ("segment2", s2))}
        assert all(starts.values()), key
        assert starts["segment2"][0] == starts["segment1"][0] + 1000  # adjacent, not overlapping
        differ += starts["view1"][0] != starts["view2"][0]
    assert differ  # independent crops
    ids = {k[0]: p for k, p in zip(keys(batch), batch["patient"])}
    manifest_patients = {}
    for path in sorted(glob.glob(os.path.join(data, "train-*"))):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            f = tf.train.Example.FromString(raw).features.feature
            manifest_patients[f["record_id"].bytes_list.value[0].decode()] = f["patient_id"].bytes_list.value[0]
    for a in ids:
        for b in ids:
            assert (ids[a] == ids[b]) == (manifest_patients[a] == manifest_patients[b])

    evaluation = InputConfig(data, split="validation", batch_size=4, training=False, leads="I",
                             views=("view1", "view2"), sample_rate=100, crop_samples=900)
    batch = batches(evaluation, 1)[0]
    ref = reference(data, "validation")
    for key, v1, v2 in zip(keys(batch), batch["view1"], batch["view2"]):
        signal = resample(ref[key][0][[0]], 250, 100)
        assert signal.shape[1] == 1000 and v1.shape == (1, 900)
        np.testing.assert_allclose(v1, z(signal[:, :900]), atol=1e-4)
        np.testing.assert_allclose(v2, z(signal[:, 100:]), atol=1e-4)
    with pytest.raises(ValueError, match="unknown input view"):
        batches(dataclasses.replace(config, views=("view3",)), 1)
    # resampling in a training and then an evaluation pipeline of one process (each its own graph)
    training = dataclasses.replace(evaluation, split="train", training=True, batch_size=4)
    assert batches(training, 1)[0]["view1"].shape == (4, 1, 900)
    assert batches(evaluation, 1)[0]["view1"].shape == (4, 1, 900)


def test_a_model_reads_a_folder_prepared_for_the_other_recipe_with_a_note(tmp_path, capsys):
    """stmem-embed and stmem-predict feed a model of one recipe a folder prepared for the other: its
    band filter on each stored window where the folder has none, none where the folder was filtered,
    saying so; a folder prepared for the model's recipe is read silently."""
    import dataclasses

    from stmem_jax.core.recipe import RECIPES
    from stmem_jax.infer import split_input

    ours = dataclasses.replace(RECIPES["stmem_jax"], eval_crops=1)
    theirs = dataclasses.replace(RECIPES["authors"], eval_crops=1)
    unfiltered = write_dataset(tmp_path / "a", num_records=2, tasks={}, splits={"test": 1.0}, recipe="authors")
    filtered = write_dataset(tmp_path / "s", num_records=2, tasks={}, splits={"test": 1.0}, recipe="stmem_jax")
    for folder, recipe, place, note in ((unfiltered, ours, "window", f"{unfiltered} (authors); the pipeline filters "
                                                                       f"each stored window"),
                                        (filtered, theirs, "record", f"{filtered} (stmem_jax); the pipeline filters "
                                                                     f"nothing"),
                                        (filtered, ours, "record", None), (unfiltered, theirs, "crop", None)):
        config = split_input(folder, "test", recipe, "12", 2)
        printed = capsys.readouterr().out
        assert config.filter == place and ((note in printed) if note else not printed), printed
        series = batches(config)[0]["series"]
        assert series.shape == (2, 1, 12, recipe.crop_samples) and np.isfinite(series).all()
