"""Fault injection: kill preparation, pre-training and fine-tuning at random points, run the same
command again, and check that the result equals an uninterrupted run.

    python benchmarks/fault_injection.py [--runs 20] [--kinds prepare,pretrain,finetune] [--seed 0]

Each kind first runs once uninterrupted (the reference, timed). Each trial starts the same command
in a fresh directory, sends SIGKILL or SIGTERM (alternately) after a random delay between 10% and
95% of the reference's wall time, then runs the command again until it finishes (killing it
again is not needed: the second run is the recovery), unless the killed run had finished (a
preparation whose manifest was written before the signal landed). The finished result is compared with the
reference: every shard file byte for byte (prepare); every parameter of the saved model to
rtol 1e-6 (pretrain, finetune: tiny models on synthetic data). Prints one line per trial and a
summary; exits 1 when any result differs.
"""

import argparse
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from stmem_jax.core.shards import MANIFEST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"model.preset": "tiny", "model.width": 64, "model.depth": 2, "model.heads": 1, "model.mlp_dim": 128,
         "train.batch_size": 16, "train.warmup_steps": 2, "log.every_steps": 1, "checkpoint.every_steps": 2,
         "checkpoint.asynchronous": False}
PRETRAIN = {**SMALL, "model.decoder_width": 64, "model.decoder_depth": 1, "model.decoder_heads": 1,
            "train.base_lr": 2e-3, "train.num_steps": 10, "eval.every_steps": 0, "log.figure_every_steps": 0}
FINETUNE = {**SMALL, "mode": "finetune", "data.task": "rhythm", "data.augment": False, "model.drop_path": 0.0,
            "train.lr": 3e-3, "train.num_steps": 10, "eval.every_steps": 5, "eval.batch_size": 16}


def commands(tmp: str) -> dict:
    """kind -> (function of the output directory giving the command, what to compare)."""
    native, shards, encoder = (os.path.join(tmp, name) for name in ("native", "reference-prepare", "reference-pretrain"))

    def flags(values):
        return [f"--config.{k}={v}" for k, v in values.items()]

    return {
        "prepare": lambda out: [sys.executable, "-m", "data_prep", "ptbxl", "--input", native, "--output", out,
                                "--workers", "2", "--shard-windows", "10", "--quiet"],
        "pretrain": lambda out: [sys.executable, "-m", "stmem_jax.cli", "pretrain",
                                 f"--config={ROOT}/configs/pretrain/st_mem.py:tiny", f"--workdir={out}",
                                 *flags({**PRETRAIN, "data.dir": shards})],
        "finetune": lambda out: [sys.executable, "-m", "stmem_jax.cli", "finetune",
                                 f"--config={ROOT}/configs/downstream/ptbxl.py:rhythm", f"--workdir={out}",
                                 *flags({**FINETUNE, "data.dir": shards, "init": encoder})],
    }


def run(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=_env())
    if result.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(command[:4])} failed ({result.returncode}): {result.stderr[-2000:]}")
    return time.perf_counter() - start


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def progress(kind: str, out: str) -> str:
    """What the killed run had finished: shards, or the latest checkpoint step."""
    if kind == "prepare":
        done = " + manifest" if os.path.exists(os.path.join(out, MANIFEST)) else ""
        return f"{len(glob.glob(os.path.join(out, '*-of-*')))} shard(s){done}"
    steps = [int(s) for s in os.listdir(os.path.join(out, "checkpoints")) if s.isdigit()] \
        if os.path.isdir(os.path.join(out, "checkpoints")) else []
    return f"checkpoint {max(steps)}" if steps else "no checkpoint"


def same(kind: str, out: str, reference: str) -> bool:
    if kind == "prepare":
        names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(reference, "*-of-*")))
        mine = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*-of-*")))
        return names == mine and all(open(os.path.join(out, n), "rb").read() == open(os.path.join(reference, n),
                                                                                        "rb").read() for n in names)
    import jax

    from stmem_jax.model_dir import load_model

    a, b = (jax.tree.leaves(load_model(os.path.join(d, "model"))[1]) for d in (out, reference))
    return len(a) == len(b) and all(np.allclose(x, y, rtol=1e-6, atol=1e-7) for x, y in zip(a, b))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="trials in all, spread over the kinds")
    parser.add_argument("--kinds", default="prepare,pretrain,finetune")
    parser.add_argument("--records", type=int, default=120, help="synthetic records to prepare")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    rng = random.Random(args.seed)
    from data_prep.synthetic import write_ptbxl

    with tempfile.TemporaryDirectory() as tmp:
        write_ptbxl(os.path.join(tmp, "native"), args.records, seed=0, workers=2, progress=False)
        build = commands(tmp)
        references, seconds = {}, {}
        needed = {"prepare", *kinds} | ({"pretrain"} if "finetune" in kinds else set())
        for kind in ("prepare", "pretrain", "finetune"):  # each reference feeds the next kind
            if kind in needed:
                references[kind] = os.path.join(tmp, f"reference-{kind}")
                seconds[kind] = run(build[kind](references[kind]))
                print(f"reference {kind}: {seconds[kind]:.1f} s", flush=True)
        print(f"{'trial':>5} {'kind':>9} {'signal':>7} {'kill at':>8} {'exit':>5} {'killed run had':>27} "
              f"{'rerun':>7} {'result':>8}", flush=True)
        mismatches = 0
        for trial in range(args.runs):
            kind = kinds[trial % len(kinds)]
            out = os.path.join(tmp, f"trial-{trial}")
            sig = (signal.SIGKILL, signal.SIGTERM)[trial // len(kinds) % 2]
            delay = rng.uniform(0.1, 0.95) * seconds[kind]
            proc = subprocess.Popen(build[kind](out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=_env())
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
                proc.wait()
            had = progress(kind, out) if os.path.isdir(out) else "nothing"
            # a preparation whose manifest is written is finished (a rerun refuses it without --overwrite)
            finished = proc.returncode == 0 or (kind == "prepare" and os.path.exists(os.path.join(out, MANIFEST)))
            rerun = 0.0 if finished else run(build[kind](out))
            ok = same(kind, out, references[kind])
            mismatches += not ok
            print(f"{trial:>5} {kind:>9} {signal.Signals(sig).name:>7} {delay:>7.1f}s {proc.returncode:>5} "
                  f"{had:>27} {rerun:>6.1f}s {'same' if ok else 'DIFFERS':>8}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        print(f"{args.runs} trial(s), {mismatches} mismatch(es)")
        return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
