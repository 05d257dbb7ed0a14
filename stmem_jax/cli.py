"""The shared shape of the config-driven commands (stmem-pretrain, stmem-finetune, stmem-benchmark)."""

from __future__ import annotations

from typing import Callable


def run_config_command(body: Callable, argv, *, example: str, workdir_help: str) -> None:
    """Parse ``--config`` (an ml_collections ``get_config(arg)`` file, every field overridable as
    ``--config.train.batch_size=512``) and ``--workdir``, then call ``body(config, workdir)``.
    Library INFO logs (orbax logs every save) are hidden unless ``--verbosity`` is given."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, f"ml_collections config file, e.g. {example}", lock_config=True)
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])

    def run(_):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        body(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(run, argv=argv)
