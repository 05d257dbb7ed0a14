"""MLAE pre-training configs: ``mlae:<preset>`` (vit_base | vit_small | tiny).

MLAE, the masked lead autoencoder baseline of the ST-MEM paper (Na et al., ICLR 2024; in the public
ST-MEM code): one token per lead holding its whole 2250-sample crop, a CLS token, fixed sine-cosine
positions, 75% of the leads masked (3 of 12 kept), one decoder over the sequence, normalised-token
MSE on the removed leads (``stmem_jax.methods.token_mae``). Encoder and decoder sizes, optimiser
and recipe are ST-MEM's. Inputs holding fewer leads (``data.leads``) enter zero-filled at the
standard positions of their leads.

Recipe, batch and epochs as ``st_mem`` (the authors' recipe; batch, epochs and warm-up ours, their
YAML holding placeholders).

    stmem-pretrain --config mlae:vit_base --workdir runs/mlae --config.data.dir=...
"""

from stmem_jax.train.config import pretraining


def get_config(arg: str = "vit_base"):
    return pretraining(arg or "vit_base", "mlae")
