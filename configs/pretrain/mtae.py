"""MTAE pre-training configs: ``mtae:<preset>`` (vit_base | vit_small | tiny).

MTAE, the masked time autoencoder baseline of the ST-MEM paper (Na et al., ICLR 2024; in the
public ST-MEM code): one token per 75-sample time patch holding all 12 leads (900 features,
sample-major then lead), a CLS token, fixed sine-cosine positions, 75% of the time patches
masked, one decoder over the whole sequence, normalised-token MSE on the removed tokens
(``stmem_jax.methods.token_mae``). Encoder and decoder sizes, optimiser and recipe are ST-MEM's
(the paper compares them at the same budget). Inputs holding fewer leads (``data.leads``) enter
zero-filled at the standard positions of their leads.

Recipe, batch and epochs as ``st_mem`` (the authors' recipe; batch, epochs and warm-up ours, their
YAML holding placeholders).

    stmem-pretrain --config mtae:vit_base --workdir runs/mtae --config.data.dir=...
"""

from stmem_jax.train.config import pretraining


def get_config(arg: str = "vit_base"):
    return pretraining(arg or "vit_base", "mtae")
