"""The config-driven commands (stmem-pretrain, stmem-finetune, stmem-benchmark) above the library:
config parsing, the built-in synthetic data when ``data.dir`` is empty, and exit codes. The
trainers under it take a prepared ``data.dir``, know nothing of data preparation and import no
command. ``python -m stmem_jax.cli pretrain|finetune|benchmark ...`` runs a command as its script does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

from stmem_jax.core import fileio

# JAX and the trainers load inside the functions: --help answers without them

# tasks of the built-in synthetic data (PTB-XL layout)
SYNTHETIC_TASKS = ("st_mem", "all", "diagnostic", "subdiagnostic", "superdiagnostic", "rhythm")


def synthetic_dataset(directory: str, records: int, seed: int = 0, workers: int = 2, recipe=None) -> str:
    """The built-in synthetic dataset: ``records`` ECGs generated in PTB-XL's layout in
    ``<directory>/native`` and prepared as ``recipe`` says (its resampling, filter at preparation or
    not, flat leads; default the authors' recipe) by the ``stmem-prepare synthetic`` command, into
    ``<directory>/shards`` (the authors' recipe) or ``<directory>/shards-<recipe>`` (on process 0; the
    others wait). Reused when already prepared; returns the shards' path."""
    import jax
    from jax.experimental import multihost_utils

    from stmem_jax.core.recipe import AUTHORS
    from stmem_jax.core.shards import MANIFEST

    recipe = recipe or AUTHORS
    prefilter = "filtered" if recipe.prefiltered else "unfiltered"
    name = recipe.name if recipe.name != "custom" else f"{recipe.resample}-{prefilter}-{recipe.flat_leads}"
    target = fileio.join(fileio.absolute(directory), "shards" if name == "authors" else f"shards-{name}")
    if jax.process_index() == 0 and not fileio.isfile(fileio.join(target, MANIFEST)):
        native = fileio.join(fileio.absolute(directory), "native")
        print(f"generating {records} synthetic ECGs in {native}", flush=True)
        command = [sys.executable, "-m", "data_prep", "synthetic", "--input", native, "--output", target,
                   "--records", str(records), "--seed", str(seed), "--workers", str(workers),
                   "--shard-windows", "500", "--resample", recipe.resample, "--flat-leads", recipe.flat_leads,
                   "--filter" if recipe.prefiltered else "--no-filter"]
        code = subprocess.run(command).returncode
        if code not in (0, 3):  # 3: finished, some records skipped
            raise RuntimeError(f"preparing the synthetic data failed (exit status {code}): {' '.join(command)}")
    multihost_utils.sync_global_devices("synthetic data ready")
    return target


def preparation(config):
    """The preparation (a ``core.recipe.Recipe``) that a trainer config's recipe expects of its folders."""
    from stmem_jax.core.recipe import Recipe
    from stmem_jax.train.config import resolve_recipe

    data = resolve_recipe(config).data
    return Recipe(resample=data.resample, flat_leads=data.flat_leads,
                  filter_on="record" if data.filter == "record" else "crop")


def with_synthetic_data(run, workdir: str) -> None:
    """Sets ``run.data.dir`` to the built-in synthetic data under ``<workdir>/data``, prepared as the
    run's recipe expects, when it is empty."""
    data = run.data
    if data.dir:
        return
    if data.get("task") and data.task not in SYNTHETIC_TASKS:
        raise ValueError(f"task {data.task!r} needs data.dir (a stmem-prepare output); the built-in synthetic data "
                         f"has the tasks {', '.join(SYNTHETIC_TASKS)}")
    data.dir = synthetic_dataset(fileio.join(workdir, "data"), data.synthetic_records, data.synthetic_seed,
                                 data.workers, preparation(run))


def use_compilation_cache() -> None:
    """Keeps compiled steps on disk (JAX's persistent compilation cache) in
    ``~/.cache/stmem-jax/xla``, so a rerun, the runs of a grid and the demo's stages load them
    instead of compiling again. ``JAX_COMPILATION_CACHE_DIR`` chooses another folder; set empty,
    it turns the cache off."""
    import jax

    if "JAX_COMPILATION_CACHE_DIR" in os.environ or jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.expanduser("~"), ".cache", "stmem-jax", "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def report(name: str, error: Exception) -> None:
    """Prints a user error: ``<name>: error: <message>`` in one line, below the traceback lines of the
    user's own module where it has them (``stmem_jax.plugins.PluginError``)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else error
    trace = getattr(error, "trace", "")
    print((f"{trace}\n" if trace else "") + f"{name}: error: {message}", file=sys.stderr, flush=True)


def guarded(name: str, body: Callable[[], int | None], *, traceback_for_user_errors: bool = False,
            user_error_status: int = 1) -> int:
    """Runs a command's ``body`` and returns its exit status: 0 (or what it returns);
    ``user_error_status`` (1) with one line ``<name>: error: ...`` (:func:`report`) for a user error
    (OSError, ValueError, KeyError, ImportError, a non-finite loss: a missing or unreadable file, a
    full or read-only disk, a bad setting, a module of the user's own that fails to import); 128 +
    the signal number when stopped by a signal (a checkpoint kept). Anything else is a bug: its
    traceback, then a line that says so (exit 1)."""
    from stmem_jax.train.loop import Interrupted, NonFiniteLoss

    user_errors = (OSError, ValueError, KeyError, ImportError, NonFiniteLoss)  # inputs, settings, disks, files
    try:
        return body() or 0
    except Interrupted as error:
        print(error, file=sys.stderr, flush=True)
        return 128 + error.signum
    except user_errors as error:
        if traceback_for_user_errors:
            raise
        report(name, error)
        return user_error_status
    except Exception:
        traceback.print_exc()
        print(f"{name}: internal error: a bug in stmem-jax, not in your inputs; please report it with the traceback "
              f"above", file=sys.stderr, flush=True)
        return 1


def check_config(name: str, config, *, verbose: bool = False) -> int:
    """What a config command does first, before it builds, compiles or writes anything: the exit
    status of ``stmem_jax.train.config.check_values`` on ``config`` (the common fields' ranges, the
    method's own fields and checks): 0, or 2 (a usage error) with one line naming every field that
    makes no sense (its traceback too with ``verbose``)."""
    from stmem_jax.train.config import check_values

    return guarded(name, lambda: check_values(config), traceback_for_user_errors=verbose, user_error_status=2)


def config_spec(args: list[str], default: str | None = None) -> str | None:
    """The value of ``--config`` in ``args`` (``--config=X`` or ``--config X``), else ``default``."""
    return next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None) or \
        next((b for a, b in zip(args, args[1:]) if a == "--config"), default)


def resolve_config_flag(args: list[str]) -> list[str]:
    """``args`` with the value of ``--config`` resolved: a shipped config's name (``st_mem:vit_base``)
    becomes its file's path (``stmem_jax.train.config.resolve``)."""
    from stmem_jax.train.config import resolve

    out = list(args)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            out[i] = "--config=" + resolve(arg[len("--config="):])
        elif arg == "--config" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
    return out


def parse_flags(args: list[str]) -> list[str]:
    """absl's flag parsing (for ``app.run``) after :func:`resolve_config_flag`, with an unknown config
    name, an argument the config refuses (an unknown preset or task: the config lists the valid
    ones) or an override of a field the config does not have named in one line (exit status 2)
    instead of a traceback."""
    from absl import app

    from stmem_jax.train.config import load_config

    try:
        resolved = resolve_config_flag(args)  # an unknown config name
        if config_spec(args):
            load_config(config_spec(args))  # an argument it refuses, raised here rather than inside absl's parsing
        return app.parse_flags_with_usage(resolved)
    except ValueError as error:
        report(os.path.basename(args[0]), error)
        sys.exit(2)
    except (AttributeError, KeyError) as error:
        key = str(error).strip("\"'")
        culprit = next((a.split("=")[0][2:] for a in args if a.startswith("--config.")
                        and key in a.split("=")[0].split(".")), key)
        print(f"{os.path.basename(args[0])}: error: {culprit} is not a field of the config "
              f"(--help lists every field)", file=sys.stderr)
        sys.exit(2)


def help_requested(args: list[str]) -> bool:
    return bool({"-h", "--help", "--helpshort", "--helpfull"} & set(args[1:]))


def answer_help(name: str, args: list[str], example: str, options: dict[str, str]) -> None:
    """Prints :func:`config_help` and exits 0; an unknown config or argument: one line, exit status 2."""
    try:
        text = config_help(name, args, example, options)
    except ValueError as error:
        report(name, error)
        sys.exit(2)
    print(text)
    sys.exit(0)


def config_help(name: str, args: list[str], example: str, options: dict[str, str]) -> str:
    """The usage of a config command: its ``options`` (flag -> what it is) and every field of its
    config (the one ``--config`` names in ``args``, else ``example``) with its default and meaning.
    Loads no JAX backend, no TensorFlow: a second or two."""
    from stmem_jax.train.config import config_names, describe_fields, load_config, resolve

    spec = config_spec(args, example)
    options = {"--config": f"a shipped config ({', '.join(config_names())}) or a config file, and its argument",
               **options}
    width = max(map(len, options))
    lines = [f"usage: {name} {' '.join(f'{k} ...' for k in options)} [--config.FIELD=VALUE ...]", ""]
    lines += [f"  {k:<{width}}  {v}" for k, v in options.items()]
    lines += ["", f"fields of {spec} (each one: --config.FIELD=VALUE):"]
    return "\n".join(lines + describe_fields(load_config(spec), resolve(spec).split(":")[0]))


def run_config_command(body_fn: Callable, argv, *, example: str, workdir_help: str,
                       run_section: Callable = lambda c: c) -> None:
    """Parse ``--config`` (an ml_collections ``get_config(arg)`` file, every field overridable as
    ``--config.train.batch_size=512``) and ``--workdir``, prepare the synthetic data when the run's
    ``data.dir`` is empty, then call ``body_fn(config, workdir)``; a dict it returns is printed as the
    ``summary:`` line (JSON, with the wall time). ``run_section`` picks the trainer's
    config out of the command's (the grid's ``config.run``). Library INFO logs (orbax logs every
    save) are hidden unless ``--verbosity`` is given. Exit status (:func:`guarded`): 0; 1 on an error
    in the inputs (one line; the traceback with ``--verbosity``); 2 on an unknown config, argument or
    field, a value that makes no sense (:func:`check_config`, before anything is prepared or written)
    or another usage error; 128 + the signal number when stopped by a signal (a checkpoint kept).
    ``--help`` lists the config's fields (exit status 0)."""
    args = sys.argv if argv is None else argv
    if help_requested(args):
        answer_help(os.path.basename(args[0]), args, example, {"--workdir": workdir_help})
    from absl import app, flags, logging
    from ml_collections import config_flags

    from stmem_jax.mesh import initialize_from_config

    config_flags.DEFINE_config_file("config", None, f"a shipped config's name or a config file, and its argument, "
                                    f"e.g. {example}", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])

    def main(_):
        verbose = flags.FLAGS["verbosity"].present
        if not verbose:
            logging.set_verbosity(logging.WARNING)
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        code = check_config(os.path.basename(sys.argv[0]), run_section(config), verbose=verbose)
        if code:
            sys.exit(code)
        start = time.time()

        def body():
            use_compilation_cache()
            initialize_from_config(run_section(config))
            with_synthetic_data(run_section(config), workdir)
            summary = body_fn(config, workdir)
            if summary is not None:
                print("summary: " + json.dumps({**summary, "wall_s": round(time.time() - start, 1)}), flush=True)

        sys.exit(guarded(os.path.basename(sys.argv[0]), body, traceback_for_user_errors=verbose))

    app.run(main, argv=argv, flags_parser=parse_flags)


def pretrain(argv=None) -> None:
    """``stmem-pretrain``: pre-training of any method (``stmem_jax.train.pretrain``)."""
    def train(config, workdir):
        from stmem_jax.train import pretrain as trainer

        return trainer.train(config, workdir)

    run_config_command(train, argv, example="st_mem:vit_base",
                       workdir_help="run directory (checkpoints, logs, figures); a run resumes from it")


def finetune(argv=None) -> None:
    """``stmem-finetune``: fine-tuning, linear probing or training from scratch (``stmem_jax.train.downstream``)."""
    def run(config, workdir):
        from stmem_jax.train.classification import scalars_of
        from stmem_jax.train.downstream import train

        record = train(config, workdir)
        return {"workdir": fileio.absolute(workdir), "selected_step": record["selected_step"],
                **{f"test_{k}": v for k, v in scalars_of(record["test"]).items()}}

    run_config_command(run, argv, example="ptbxl:st_mem",
                       workdir_help="run directory (checkpoints, logs, metrics); a run resumes from it")


def benchmark(argv=None) -> None:
    """``stmem-benchmark``: the paper's evaluation grid (``stmem_jax.grid``). ``--reference paper``
    is short for ``--config.grid.reference=paper``: the paper's numbers beside ours."""
    def run(config, workdir):
        from stmem_jax.grid import run_grid

        result = run_grid(config, workdir)
        print(result["table"])
        print(f"ran {len(result['ran'])} run(s), {len(result['skipped'])} already done", flush=True)

    args = list(sys.argv if argv is None else argv)
    for i in reversed(range(len(args))):  # --reference X / --reference=X -> --config.grid.reference=X
        if args[i] == "--reference" and i + 1 < len(args):
            args[i:i + 2] = [f"--config.grid.reference={args[i + 1]}"]
        elif args[i].startswith("--reference="):
            args[i] = "--config.grid.reference=" + args[i].split("=", 1)[1]
    if argv is None:
        sys.argv[:] = args  # ml_collections reads the config overrides from sys.argv
    run_config_command(run, None if argv is None else args, example="grid:ptbxl:st_mem",
                       workdir_help="grid directory (one sub-directory per run); a rerun resumes it",
                       run_section=lambda config: config.run)


def convert(argv: list[str] | None = None) -> int:
    """``stmem-convert``: public PyTorch checkpoints to model directories and back (``stmem_jax.convert``).
    Exit status 0; 1 on an error in the inputs (one line naming the file); 2 on a usage error."""
    import argparse

    from stmem_jax import convert as lib
    from stmem_jax.core.recipe import authors_for
    from stmem_jax.model_dir import load_model, save_model
    from stmem_jax.models import count_parameters, model_config

    parser = argparse.ArgumentParser(prog="stmem-convert", description=lib.__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="PyTorch .pth file -> model directory (orbax) for our trainers")
    imp.add_argument("checkpoint", help="public ST-MEM, MTAE or MLAE .pth file")
    imp.add_argument("output", help="directory to write")
    imp.add_argument("--allow-unused", action="store_true", help="list unknown tensors instead of failing")
    imp.add_argument("--kind", choices=lib.torch_kinds(),
                     help="model family, overriding the file's config and the shape rule (MTAE vs MLAE)")
    exp = sub.add_parser("export", help="model directory -> PyTorch .pth file in the public layout")
    exp.add_argument("model_dir", help="directory written by 'stmem-convert import' or a trainer")
    exp.add_argument("output", help=".pth file to write")
    exp.add_argument("--encoder-only", action="store_true", help="write the encoder file only")
    for command in (imp, exp):
        command.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    if args.command == "export" and fileio.exists(args.output) and not args.overwrite:
        parser.error(f"{args.output} exists; pass --overwrite to replace it")

    def body():
        if args.command == "import":
            model, variables = lib.load_torch_checkpoint(args.checkpoint, strict=not args.allow_unused,
                                                         kind=args.kind)
            recipe = authors_for(model)  # the authors' code trained it
            save_model(args.output, model, variables, overwrite=args.overwrite,
                       metadata={"source": fileio.absolute(args.checkpoint), "recipe": recipe.to_dict()})
        else:
            model, variables = load_model(args.model_dir)
            lib.save_torch_checkpoint(args.output, model, variables, encoder_only=args.encoder_only)
        print(f"{args.command}ed {type(model).__name__} (preset {lib.preset_name(model) or 'custom'}, "
              f"kind {model_config(model)['kind']}, {count_parameters(model, variables) / 1e6:.2f} M parameters) "
              f"-> {args.output}")

    return guarded("stmem-convert", body)


def overlap(argv: list[str] | None = None) -> int:
    """``stmem-overlap``: windows and patients two prepared folders share (``stmem_jax.overlap``)."""
    import argparse

    from stmem_jax import overlap as lib

    p = argparse.ArgumentParser(prog="stmem-overlap", description=lib.__doc__.splitlines()[0])
    p.add_argument("a", help="prepared folder(s), comma-separated: the reference (e.g. pre-training data)")
    p.add_argument("b", help="prepared folder(s), comma-separated: counted per split (e.g. downstream data)")
    p.add_argument("--a-split", help="compare with this split of A only (e.g. train: what pre-training read)")
    p.add_argument("--csv", help="write the overlapping windows of both sides here")
    args = p.parse_args(argv)

    def body():
        report, rows = lib.compare(args.a, args.b, args.a_split)
        print("\n".join(lib.describe(report)))
        if args.csv:
            lib.write_csv(args.csv, rows)
            print(f"wrote {len(rows)} overlapping pair(s) to {args.csv}", file=sys.stderr)

    return guarded("stmem-overlap", body)


COMMANDS = {"pretrain": pretrain, "finetune": finetune, "benchmark": benchmark, "convert": convert,
            "overlap": overlap}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m stmem_jax.cli {{{'|'.join(COMMANDS)}}} --config=... --workdir=...")
    name = sys.argv.pop(1)
    sys.argv[0] = f"stmem-{name}"
    sys.exit(COMMANDS[name]())
