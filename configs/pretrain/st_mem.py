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

The optimiser decays Dense kernels only (``train.weight_decay_on="kernels"``, weight decay 0.05);
the public code decays every parameter at 0.01: add ``--config.train.weight_decay_on=all
--config.train.weight_decay=0.01`` to match it. ``data.weights`` (e.g. ``1,1,2``) changes each
folder's share.
"""

from stmem_jax.train.config import pretraining


def get_config(arg: str = "vit_base"):
    return pretraining(arg or "vit_base", "st_mem")
