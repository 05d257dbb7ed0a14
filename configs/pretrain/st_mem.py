"""ST-MEM pre-training configs: ``st_mem:<preset>``.

ST-MEM (Na et al., ICLR 2024): 75% of the 75-sample patches of every lead masked independently,
encoder with SEP and lead embeddings, lead-wise shared decoder, normalised-patch MSE on the removed
patches (``stmem_jax.methods.st_mem``; the facts in the project's spec). ``model.lead_indicators``:
``both`` (ST-MEM), ``lead``, ``sep`` or ``none`` (the paper's "w/o lead indicators" ablation).

Presets: ``vit_base`` (the paper's recipe), ``vit_small``, ``tiny`` (CPU demo, minutes). The fields
and their defaults are ``stmem_jax.train.config.pretraining``. With ``data.dir`` empty,
stmem-pretrain prepares the built-in synthetic dataset. Every field can be overridden:
``--config.train.batch_size=512 --config.model.lead_indicators=none``.

The paper's pre-training (Chapman-Shaoxing and Ningbo from Challenge 2021 v1.0.3, and CODE-15),
each source prepared into its own folder, then read together (one epoch = one pass over the union):

    stmem-prepare challenge2021 --input /data/challenge2021 --output /data/shards/chapman --subsets chapman_shaoxing
    stmem-prepare challenge2021 --input /data/challenge2021 --output /data/shards/ningbo --subsets ningbo
    stmem-prepare code15 --input /data/code15 --output /data/shards/code15
    stmem-pretrain --config st_mem:vit_base --workdir runs/vit_base \
        --config.data.dir=/data/shards/chapman,/data/shards/ningbo,/data/shards/code15

The recipe is the authors' (``config.recipe``, ``stmem_jax.train.config``): AdamW betas (0.9, 0.95),
weight decay 0.01 on every parameter, lr 1.5e-4 x batch / 256, each crop band-filtered; folders
prepared with ``stmem-prepare --recipe authors`` (the default). Batch 512, 800 epochs and 40
warm-up epochs are ours: the authors' YAML holds placeholders (16, 10, 3) beside a dummy dataset.
``--config.recipe=stmem_jax`` runs our departures (docs/guide.md, "The recipe"). ``data.weights``
(e.g. ``1,1,2``) changes each folder's share.
"""

from stmem_jax.train.config import pretraining


def get_config(arg: str = "vit_base"):
    return pretraining(arg or "vit_base", "st_mem")
