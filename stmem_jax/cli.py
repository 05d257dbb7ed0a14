"""The command-line layer of the config-driven commands (stmem-pretrain, stmem-finetune,
stmem-benchmark): config parsing, the built-in synthetic data when ``data.dir`` is empty, and exit
codes. The trainers under it take a prepared ``data.dir`` and know nothing of data preparation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import ml_collections
from jax.experimental import multihost_utils

from stmem_jax.core.shards import MANIFEST
from stmem_jax.mesh import initialize_from_config
from stmem_jax.train.loop import Interrupted, NonFiniteLoss

# tasks of the built-in synthetic data (PTB-XL layout)
SYNTHETIC_TASKS = ("st_mem", "all", "diagnostic", "subdiagnostic", "superdiagnostic", "rhythm")


def synthetic_dataset(directory: str, records: int, seed: int = 0, workers: int = 2) -> str:
    """The built-in synthetic dataset: ``records`` ECGs generated in PTB-XL's layout in
    ``<directory>/native`` and prepared into ``<directory>/shards`` by the ``stmem-prepare synthetic``
    command (on process 0; the others wait). Reused when already prepared; returns the shards' path."""
    target = os.path.join(os.path.abspath(directory), "shards")
    if jax.process_index() == 0 and not os.path.isfile(os.path.join(target, MANIFEST)):
        native = os.path.join(os.path.abspath(directory), "native")
        print(f"generating {records} synthetic ECGs in {native}", flush=True)
        command = [sys.executable, "-m", "data_prep", "synthetic", "--input", native, "--output", target,
                   "--records", str(records), "--seed", str(seed), "--workers", str(workers),
                   "--shard-windows", "500"]
        code = subprocess.run(command).returncode
        if code not in (0, 3):  # 3: finished, some records skipped
            raise RuntimeError(f"preparing the synthetic data failed (exit status {code}): {' '.join(command)}")
    multihost_utils.sync_global_devices("synthetic data ready")
    return target


def with_synthetic_data(run: ml_collections.ConfigDict, workdir: str) -> None:
    """Sets ``run.data.dir`` to the built-in synthetic data under ``<workdir>/data`` when it is empty."""
    data = run.data
    if data.dir:
        return
    if data.get("task") and data.task not in SYNTHETIC_TASKS:
        raise ValueError(f"task {data.task!r} needs data.dir (a stmem-prepare output); the built-in synthetic data "
                         f"has the tasks {', '.join(SYNTHETIC_TASKS)}")
    data.dir = synthetic_dataset(os.path.join(workdir, "data"), data.synthetic_records, data.synthetic_seed,
                                 data.workers)


def use_compilation_cache() -> None:
    """Keeps compiled steps on disk (JAX's persistent compilation cache) in
    ``~/.cache/stmem-jax/xla``, so a rerun, the runs of a grid and the demo's stages load them
    instead of compiling again. ``JAX_COMPILATION_CACHE_DIR`` chooses another folder; set empty,
    it turns the cache off."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "stmem-jax", "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def parse_flags(args: list[str]) -> list[str]:
    """absl's flag parsing (for ``app.run``), with an override of a field the config does not have
    named in one line (exit status 2) instead of a traceback."""
    from absl import app

    try:
        return app.parse_flags_with_usage(args)
    except (AttributeError, KeyError) as error:
        key = str(error).strip("\"'")
        culprit = next((a.split("=")[0][2:] for a in args if a.startswith("--config.")
                        and key in a.split("=")[0].split(".")), key)
        print(f"{os.path.basename(args[0])}: error: {culprit} is not a field of the config "
              f"(stmem_jax/train/config.py lists every field)", file=sys.stderr)
        sys.exit(2)


def run_config_command(body: Callable, argv, *, example: str, workdir_help: str,
                       run_section: Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict] = lambda c: c
                       ) -> None:
    """Parse ``--config`` (an ml_collections ``get_config(arg)`` file, every field overridable as
    ``--config.train.batch_size=512``) and ``--workdir``, prepare the synthetic data when the run's
    ``data.dir`` is empty, then call ``body(config, workdir)``; a dict it returns is printed as the
    ``summary:`` line (JSON, with the wall time). ``run_section`` picks the trainer's
    config out of the command's (the grid's ``config.run``). Library INFO logs (orbax logs every
    save) are hidden unless ``--verbosity`` is given. Exit status: 0; 1 on an error in the inputs
    (a missing folder, a bad value: the message, and the traceback with ``--verbosity``); 2 on an
    unknown config field or another usage error; 128 + the signal number when stopped by a signal
    (a checkpoint kept)."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, f"ml_collections config file, e.g. {example}", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])

    def main(_):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        use_compilation_cache()
        initialize_from_config(run_section(config))
        with_synthetic_data(run_section(config), workdir)
        start = time.time()
        try:
            summary = body(config, workdir)
        except Interrupted as error:
            print(error, file=sys.stderr, flush=True)
            sys.exit(128 + error.signum)
        except (FileNotFoundError, FileExistsError, ValueError, NonFiniteLoss) as error:
            if flags.FLAGS["verbosity"].present:
                raise
            print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr, flush=True)
            sys.exit(1)
        if summary is not None:
            print("summary: " + json.dumps({**summary, "wall_s": round(time.time() - start, 1)}), flush=True)

    app.run(main, argv=argv, flags_parser=parse_flags)
