"""Run feedback from process 0: a log line per interval, TensorBoard scalars, metrics.jsonl."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax

from stmem_jax.core import fileio


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Reporter:
    """Writes ``metrics.jsonl`` and TensorBoard event files under ``workdir`` and prints
    ``step  epoch  loss  lr  grad_norm  examples/s  ETA`` lines; silent on other processes. A workdir
    in a bucket gets them from a local copy every 30 s and when the run ends (``fileio.LocalMirror``)."""

    def __init__(self, workdir: str, total_steps: int, steps_per_epoch: int, global_batch: int):
        self.active = jax.process_index() == 0
        self.total_steps, self.steps_per_epoch, self.global_batch = total_steps, steps_per_epoch, global_batch
        self._last_time, self._last_step = time.perf_counter(), None
        if self.active:
            self._mirror = fileio.LocalMirror(workdir, ("metrics.jsonl",))
            self._jsonl = open(os.path.join(self._mirror.path, "metrics.jsonl"), "a")
            import tensorflow as tf

            self._tf = tf
            self._writer = tf.summary.create_file_writer(os.path.join(self._mirror.path, "tensorboard"))

    def write(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        """Records scalars at ``step`` (jsonl + TensorBoard); prints them unless they are training's
        (:meth:`log` prints those with rate and ETA)."""
        if not self.active:
            return
        if prefix != "train":
            print("  ".join([f"step {step}/{self.total_steps}", prefix] +
                            [f"{k} {v:.4g}" for k, v in metrics.items()]), flush=True)
        self._jsonl.write(json.dumps({"step": step, "split": prefix, **metrics}) + "\n")
        self._jsonl.flush()
        with self._writer.as_default(step=step):
            for name, value in metrics.items():
                self._tf.summary.scalar(f"{prefix}/{name}", value)
        self._writer.flush()
        self._mirror.sync()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Records and prints one interval's line; ``step`` is the number of steps done."""
        now = time.perf_counter()
        if self._last_step is not None and step > self._last_step:
            rate = (step - self._last_step) / (now - self._last_time)
            metrics = {**metrics, "examples_per_s": rate * self.global_batch}
            eta = _duration((self.total_steps - step) / rate)
        else:
            eta = "-"
        self._last_time, self._last_step = now, step
        self.write(step, metrics)
        if self.active:
            parts = [f"step {step}/{self.total_steps}", f"epoch {step / self.steps_per_epoch:.2f}"]
            parts += [f"{k} {v:.4g}" for k, v in metrics.items() if k != "examples_per_s"]
            if "examples_per_s" in metrics:
                parts.append(f"{metrics['examples_per_s']:.1f} ex/s")
            print("  ".join(parts + [f"ETA {eta}"]), flush=True)

    def first_step(self, step: int, metrics: dict[str, float]) -> None:
        """Prints the first step of a run (console only: it took the compilation too) and starts the
        rate clock after it."""
        if self.active:
            seconds = time.perf_counter() - self._last_time
            parts = [f"step {step}/{self.total_steps}"] + [f"{k} {v:.4g}" for k, v in metrics.items()]
            print("  ".join(parts + [f"first step, compilation included: {seconds:.1f} s"]), flush=True)
        self.reset_clock(step)

    def resume(self, step: int) -> None:
        """Starts (or resumes) at ``step``: ``metrics.jsonl`` forgets what an interrupted run wrote
        after it (the resumed run writes those steps again), and the rate clock restarts."""
        if self.active and step > 0:
            self._jsonl.close()
            kept = []
            with open(self._jsonl.name) as f:
                for line in f:
                    try:
                        if json.loads(line)["step"] <= step:
                            kept.append(line)
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut by the interruption
            with open(self._jsonl.name + ".tmp", "w") as f:
                f.writelines(kept)
            os.replace(self._jsonl.name + ".tmp", self._jsonl.name)
            self._jsonl = open(self._jsonl.name, "a")
        self.reset_clock(step)

    def reset_clock(self, step: int) -> None:
        """Restarts the rate measurement (after compilation, evaluation or a checkpoint save)."""
        self._last_time, self._last_step = time.perf_counter(), step

    def close(self) -> None:
        if self.active:
            self._jsonl.close()
            self._writer.close()
            self._mirror.close()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scalars(tree: Any) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(tree).items()}
