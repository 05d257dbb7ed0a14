"""MTAE+RLM pre-training configs: ``mtae_rlm:<preset>`` (vit_base | vit_small | tiny).

MTAE (``mtae``) pre-trained on inputs with random lead masking (RLM; Oh et al.,
"Lead-agnostic self-supervised learning for local and global representations of
electrocardiogram", CHIL 2022): each of the 12 leads of a training example is zeroed
independently with probability 0.5 and the kept leads are left as they are
(``data.lead_masking=0.5``). The reconstruction target is the masked input (dropped leads are
zeros there too), as the public MTAE builds its target from what it is given. The public ST-MEM
code holds an unused variant, probability 0.3 then the kept leads re-standardised together:
``--config.data.lead_masking=0.3 --config.data.lead_masking_restandardize=True``. Validation
inputs are not masked. RLM is an input option of every method: ``--config.data.lead_masking``
works with any pre-training config.

    stmem-pretrain --config mtae_rlm:vit_base --workdir runs/mtae_rlm --config.data.dir=...
"""

from stmem_jax.train.config import pretraining


def get_config(arg: str = "vit_base"):
    config = pretraining(arg or "vit_base", "mtae")
    config.data.lead_masking = 0.5
    return config
