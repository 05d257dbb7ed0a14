"""CMSC pre-training configs: ``cmsc:<preset>`` (vit_base | vit_small | tiny).

CMSC, contrastive multi-segment coding (CLOCS, Kiyasseh et al., ICML 2021; all 12 leads at once
as in Oh et al. 2022), the ST-MEM paper's baseline with a ViT-B encoder
(``stmem_jax.methods.cmsc``): two adjacent, non-overlapping 1200-sample segments of each 10 s
window (``data.segment_samples``; 16 patches each, at positions 1..16; our choice), the other
segments of the same patient in the batch as further positives (``patient_id`` of the shards),
L2-normalised CLS representations, temperature 0.1, the positives weighted as CLOCS's code does
(``model.positives=clocs``; ``fairseq``: as fairseq-signals), no projection head, no augmentation
(as the original). The ViT is MTAE's classifier encoder, so the exported encoder (2250-sample inputs)
fine-tunes and probes as ``mtae_classifier``. Optimiser and recipe are ST-MEM's. The loss couples
the examples of a batch: a step is never split into micro-batches.

    stmem-pretrain --config cmsc:vit_base --workdir runs/cmsc --config.data.dir=...
"""

from stmem_jax.train.config import pretraining


def get_config(arg: str = "vit_base"):
    return pretraining(arg or "vit_base", "cmsc")
