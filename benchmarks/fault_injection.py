"""Fault injection: kill preparation, pre-training, fine-tuning and the linear probe at random points
or while they write a checkpoint, resume them wrongly, run the same command again, and check that
the result equals an uninterrupted run.

    python benchmarks/fault_injection.py [--runs 24] [--kinds prepare,pretrain,finetune,linprobe] [--seed 0]

Each kind first runs once uninterrupted (the reference, timed). Each trial starts the same command
in a fresh directory and sends SIGKILL or SIGTERM (alternating every other round) at a moment that
alternates between a random delay (10-95% of the reference's wall time) and the first moment a
checkpoint is being written (orbax's temporary folder appears; preparation: a random delay). When
the killed run left a checkpoint, the command is then run with a setting that changes the model
(pre-training: ``model.width``; fine-tuning and probe: ``init=random:mlae``): it must fail with
one line (exit 1) and leave the workdir as it was. Then the same command runs again until it
finishes, unless the killed run had finished (a preparation whose manifest was written before the
signal landed). The result is compared with the reference: every shard file byte for byte
(prepare); every parameter of the saved model to rtol 1e-6 (pretrain, finetune, linprobe: tiny
models on synthetic data). Prints one line per trial and a summary; exits 1 when any result
differs or a wrong resume was not refused as it should be.
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
LINPROBE = {**FINETUNE, "mode": "linprobe", "train.num_steps": 40, "checkpoint.every_steps": 4, "eval.every_steps": 10}
KINDS = ("prepare", "pretrain", "finetune", "linprobe")
# a setting that changes the shapes of each kind's state: resuming with it must be refused
CHANGED = {"pretrain": {"model.width": 128}, "finetune": {"init": "random:mlae"}, "linprobe": {"init": "random:mlae"}}


def commands(tmp: str) -> dict:
    """kind -> function of the output directory (and changed settings) giving the command."""
    native, shards, encoder = (os.path.join(tmp, name)
                               for name in ("native", "reference-prepare", "reference-pretrain"))

    def config_command(name, config, values):
        return lambda out, changed=(): [sys.executable, "-m", "stmem_jax.cli", name, f"--config={config}",
                                        f"--workdir={out}",
                                        *[f"--config.{k}={v}" for k, v in {**values, **dict(changed)}.items()]]

    return {
        "prepare": lambda out, changed=(): [sys.executable, "-m", "data_prep", "ptbxl", "--input", native, "--output",
                                            out, "--workers", "2", "--shard-windows", "10", "--quiet"],
        "pretrain": config_command("pretrain", "st_mem:tiny", {**PRETRAIN, "data.dir": shards}),
        "finetune": config_command("finetune", "ptbxl:rhythm",
                                   {**FINETUNE, "data.dir": shards, "init": encoder}),
        "linprobe": config_command("finetune", "ptbxl:rhythm",
                                   {**LINPROBE, "data.dir": shards, "init": encoder}),
    }


def files(root: str) -> dict:
    """Every file under ``root`` with its size and modification time."""
    return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_size, os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, names in os.walk(root) for f in names}


def refused(command: list[str], out: str) -> str:
    """Runs a resume that must be refused: 'refused' when it failed with one line and touched nothing."""
    before = files(out)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=_env())
    lines = [line for line in result.stderr.splitlines() if line.startswith("stmem-")]
    ok = result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr and files(out) == before
    return "refused" if ok else f"NOT REFUSED (exit {result.returncode})"


def kill_when_writing(proc: subprocess.Popen, out: str, limit: float) -> bool:
    """Waits until a checkpoint is being written under ``out`` (an orbax temporary folder), at most
    ``limit`` seconds; True when the process is still running then."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end and proc.poll() is None:
        if any("tmp" in name for base in ("checkpoints", "best") for name in
               (os.listdir(os.path.join(out, base)) if os.path.isdir(os.path.join(out, base)) else ())):
            return True
        time.sleep(0.002)
    return proc.poll() is None


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
    parser.add_argument("--runs", type=int, default=24, help="trials in all, spread over the kinds")
    parser.add_argument("--kinds", default=",".join(KINDS))
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
        needed = {"prepare", *kinds} | ({"pretrain"} if {"finetune", "linprobe"} & set(kinds) else set())
        for kind in KINDS:  # each reference feeds the next kind
            if kind in needed:
                references[kind] = os.path.join(tmp, f"reference-{kind}")
                seconds[kind] = run(build[kind](references[kind]))
                print(f"reference {kind}: {seconds[kind]:.1f} s", flush=True)
        print(f"{'trial':>5} {'kind':>9} {'signal':>7} {'kill at':>16} {'exit':>5} {'killed run had':>27} "
              f"{'changed config':>15} {'rerun':>7} {'result':>8}", flush=True)
        failures = 0
        for trial in range(args.runs):
            kind = kinds[trial % len(kinds)]
            out = os.path.join(tmp, f"trial-{trial}")
            sig = (signal.SIGKILL, signal.SIGTERM)[trial // len(kinds) % 2]
            writing = kind != "prepare" and trial // (2 * len(kinds)) % 2 == 1
            delay = rng.uniform(0.1, 0.95) * seconds[kind]
            start = time.perf_counter()
            proc = subprocess.Popen(build[kind](out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=_env())
            if writing:
                alive = kill_when_writing(proc, out, 3 * seconds[kind])
            else:
                try:
                    proc.wait(timeout=delay)
                    alive = False
                except subprocess.TimeoutExpired:
                    alive = True
            if alive:
                proc.send_signal(sig)
            proc.wait()
            moment = f"{'writing' if writing else 'random'} {time.perf_counter() - start:.1f}s"
            had = progress(kind, out) if os.path.isdir(out) else "nothing"
            # a preparation whose manifest is written is finished (a rerun refuses it without --overwrite)
            finished = proc.returncode == 0 or (kind == "prepare" and os.path.exists(os.path.join(out, MANIFEST)))
            changed = refused(build[kind](out, CHANGED[kind].items()), out) \
                if kind in CHANGED and (had.startswith("checkpoint") or finished) else "-"
            rerun = 0.0 if finished else run(build[kind](out))
            ok = same(kind, out, references[kind])
            failures += (not ok) + changed.startswith("NOT")
            print(f"{trial:>5} {kind:>9} {signal.Signals(sig).name:>7} {moment:>16} {proc.returncode:>5} "
                  f"{had:>27} {changed:>15} {rerun:>6.1f}s {'same' if ok else 'DIFFERS':>8}", flush=True)
            shutil.rmtree(out, ignore_errors=True)
        print(f"{args.runs} trial(s), {failures} failure(s)")
        return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
