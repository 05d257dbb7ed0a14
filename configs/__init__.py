"""The shipped configs, by name (``stmem_jax.train.config.config_names``): ``pretrain/`` one per
pre-training method (``st_mem:vit_base``), ``downstream/`` one per dataset and the evaluation grid
(``ptbxl:st_mem``, ``grid:ptbxl:st_mem``). Each is an ml_collections ``get_config(arg)`` file;
``stmem_jax.train.config.load_config`` loads one by name or path, as ``--config`` does."""
