"""Every registered pre-training method (and one defined outside the package) through the whole
path: pre-training with validation and a figure, a resume, the exported encoder, fine-tuning and a
linear probe from it; on 1 device (interrupted half-way and resumed) and on 8 simulated devices (in
one go), which must agree."""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "configs", "pretrain")
SMALL = {"model.width": 64, "model.depth": 1, "model.heads": 1, "model.mlp_dim": 128, "model.decoder_width": 64,
         "model.decoder_depth": 1, "model.decoder_heads": 1, "train.batch_size": 16, "train.warmup_steps": 1,
         "train.lr": 2e-3, "train.num_steps": 4, "log.every_steps": 1, "eval.every_steps": 2, "eval.batch_size": 32,
         "log.figure_every_steps": 4, "checkpoint.every_steps": 1000, "checkpoint.asynchronous": False}
# config file, overrides, the downstream leads: every config file, a method of one's own, and the
# reduced-lead inputs (ST-MEM slices them, MTAE and MLAE fill the missing leads with zeros)
CASES = {
    "st_mem": ("st_mem.py", {}, "limb"),
    "mtae": ("mtae.py", {}, "12"),
    "mtae_rlm": ("mtae_rlm.py", {}, "limb"),
    "mlae": ("mlae.py", {}, "1"),
    "averaged": ("st_mem.py", {"method": "tests.toy_method"}, "12"),
    "moco_v3": ("moco_v3.py", {"model.hidden_dim": 64, "model.out_dim": 32}, "12"),
    "cmsc": ("cmsc.py", {"data.segment_samples": 600}, "limb"),
    "cpc": ("cpc.py", {"model.width": 16, "model.negatives": 8}, "limb"),  # tiny: 100 Hz, resampled in the pipeline (downstream follows the encoder)
}



@functools.cache
def downstream_on_eight() -> set[str]:
    """The cases that fine-tune and probe on 8 devices too: the first of each classifier kind (the
    others' classifiers are the same code; on 1 device every case runs them). Computed when a test
    runs: resolving the toy method registers its model kind, which collection must not see."""
    from stmem_jax import methods
    from stmem_jax.train.config import load_config

    seen = {}
    for case, (file, overrides, _) in CASES.items():
        method = overrides.get("method") or load_config(os.path.join(PRETRAIN, file), "tiny").method
        seen.setdefault(methods.get(method).classifier, case)
    return set(seen.values())


# parameters whose true gradient is zero, so that Adam moves them by +-lr at the sign of rounding noise
# once that noise exceeds its epsilon (the contrastive losses' large gradients): the key third of the
# fused qkv bias (a constant added to every key shifts no softmax) and, in front of MoCo v3's projector,
# the final LayerNorm's offset (its BatchNorm removes any offset): two runs part by at most 2 lr per step
# on each of their width entries
NOISE_DRIVEN = ("qkv/bias", "encoder/norm/bias")
NOISE_BOUND = 2 * SMALL["train.lr"] * SMALL["train.num_steps"] * SMALL["model.width"]


def _set(config, key, value):
    *path, field = key.split(".")
    for name in path:
        config = config[name]
    config[field] = value


def exercise(case: str, root: str, data_dir: str, interrupt: bool, downstream_runs: bool = True) -> dict:
    """Pre-trains ``case`` in ``root`` (stopping after 2 of its 4 steps and resuming when ``interrupt``),
    then fine-tunes and linear-probes its encoder; returns what the runs logged and their results."""
    from stmem_jax import methods
    from stmem_jax.model_dir import load_model
    from stmem_jax.train import downstream, pretrain
    from stmem_jax.train.config import downstream as downstream_config, load_config

    file, overrides, leads = CASES[case]
    config = load_config(os.path.join(PRETRAIN, file), "tiny")
    for key, value in {**SMALL, **overrides, "data.dir": data_dir}.items():
        _set(config, key, value)
    workdir = os.path.join(root, case, "pretrain")
    if interrupt:
        config.train.max_steps_per_run = 2
        first = pretrain.train(config, workdir)
        assert first["step"] == 2 and not os.path.exists(os.path.join(workdir, "encoder"))
        config.train.max_steps_per_run = 0
    summary = pretrain.train(config, workdir)
    assert summary["step"] == 4
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    method = methods.get(config.method)
    encoder, _ = load_model(os.path.join(workdir, "encoder"))
    model, variables = load_model(os.path.join(workdir, "model"))

    results = {}
    for mode, steps in (("finetune", 2), ("linprobe", 6)) if downstream_runs else ():
        run = downstream_config()
        for key, value in {**{k: v for k, v in SMALL.items() if not k.startswith("model.decoder")},
                           "model.drop_path": 0.0, "data.augment": False, "train.num_steps": steps,
                           "data.dir": data_dir, "data.task": "rhythm", "data.leads": leads, "mode": mode,
                           "init": workdir}.items():
            _set(run, key, value)
        results[mode] = downstream.train(run, os.path.join(root, case, mode))["test"]
    return {"train": [r["loss"] for r in rows if r["split"] == "train"],
            "validation": [(r["step"], r["loss"]) for r in rows if r["split"] == "validation"],
            "figures": sorted(os.listdir(os.path.join(workdir, "figures"))) if os.path.isdir(
                os.path.join(workdir, "figures")) else [],
            "has_figure": type(method).figure is not methods.Method.figure,
            "encoder": type(encoder).__name__, "encoder_kind": method.classifier,
            "params": {"/".join(k.key for k in path): float(np.abs(np.asarray(x, np.float64)).sum()) for path, x in
                       __import__("jax").tree_util.tree_leaves_with_path(variables)},
            "auroc": {mode: r["auroc"] for mode, r in results.items()},
            "examples": {mode: r["num_examples"] for mode, r in results.items()}}


@pytest.fixture(scope="module")
def on_eight_devices(synthetic_shards, tmp_path_factory):
    """Every case on 8 simulated devices, uninterrupted, in one process."""
    root = str(tmp_path_factory.mktemp("eight"))
    code = (f"import json, test_methods\n"
            f"print(json.dumps({{c: test_methods.exercise(c, {root!r}, {synthetic_shards!r}, False, "
            f"c in test_methods.downstream_on_eight()) "
            f"for c in test_methods.CASES}}))")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_method_pretrains_resumes_exports_finetunes_and_probes_alike_on_one_and_eight_devices(
        case, synthetic_shards, tmp_path, on_eight_devices):
    from stmem_jax import models

    one = exercise(case, str(tmp_path), synthetic_shards, interrupt=True)
    eight = on_eight_devices[case]
    assert len(one["train"]) == 4 and [s for s, _ in one["validation"]] == [2, 4]
    assert one["figures"] == (["reconstruction_0000004.png"] if one["has_figure"] else [])
    assert one["encoder"] == models.kinds()[one["encoder_kind"]][0].__name__
    assert one["examples"] == {"finetune": 49, "linprobe": 49} and all(0 <= a <= 1 for a in one["auroc"].values())
    # resumed on one device = uninterrupted on eight: the losses, the validation (the extra state's, for
    # the averaged method) and the exported parameters
    np.testing.assert_allclose(one["train"], eight["train"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([v for _, v in one["validation"]], [v for _, v in eight["validation"]], rtol=1e-4)
    assert one["params"].keys() == eight["params"].keys()
    for path, value in one["params"].items():
        atol = NOISE_BOUND if path.endswith(NOISE_DRIVEN) else 1e-3
        np.testing.assert_allclose(value, eight["params"][path], rtol=1e-4, atol=atol, err_msg=f"{case} {path}")
    if case in downstream_on_eight():
        np.testing.assert_allclose(list(one["auroc"].values()), list(eight["auroc"].values()), atol=0.02)



def test_method_configs_set_the_method_and_its_options():
    """Each config file names its method; the lead-indicator ablation and RLM are fields of them."""
    from stmem_jax import methods
    from stmem_jax.train.config import load_config

    configs = {name: load_config(os.path.join(PRETRAIN, f"{name}.py"), "tiny")
               for name in ("st_mem", "mtae", "mtae_rlm", "mlae")}
    assert {n: c.method for n, c in configs.items()} == {"st_mem": "st_mem", "mtae": "mtae", "mtae_rlm": "mtae",
                                                         "mlae": "mlae"}
    assert configs["mtae_rlm"].data.lead_masking == 0.5 and configs["mtae"].data.lead_masking == 0.0
    config = configs["st_mem"]
    config.model.lead_indicators = "none"
    assert methods.get("st_mem").model(config, range(12)).lead_indicators == "none"
    assert {"st_mem", "mtae", "mlae", "moco_v3", "cmsc", "cpc"} <= set(methods.names())
    with pytest.raises(ValueError, match="unknown method 'moco'"):
        methods.get("moco")
    with pytest.raises(ValueError, match="importing its module failed: ModuleNotFoundError"):
        methods.get("my_lab.nothing_here")
