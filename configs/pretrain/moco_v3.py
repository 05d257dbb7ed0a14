"""MoCo v3 pre-training configs: ``moco_v3:<preset>`` (vit_base | vit_small | tiny).

MoCo v3 (Chen, Xie and He, ICCV 2021), the ST-MEM paper's contrastive baseline with a ViT-B
encoder (``stmem_jax.methods.moco_v3``): two views per example, each an independent 2250-sample
crop through the ECG RandAugment (2 ops, probability 0.5, level 10: our choice for ECGs), projector
and predictor with BatchNorm over the global batch, a momentum encoder (0.99 -> 1, cosine),
symmetric InfoNCE at temperature 0.2 against the keys of the global batch, the patch embedding
frozen at its random initialisation. The ViT is MTAE's classifier encoder, so the exported encoder
fine-tunes and probes as ``mtae_classifier``.

Optimiser, as MoCo v3's ViT recipe: AdamW, base learning rate 1.5e-4 x batch / 256, weight decay
0.1 (on every parameter under the authors' recipe, the default; Dense kernels under ``stmem_jax``),
betas (0.9, 0.999), warm-up 40 of 300 epochs scaled to the epoch budget
(``train.epochs``, ST-MEM's 800 here: 107 warm-up epochs). The loss couples the examples of a
batch: a step is never split into micro-batches (``train.grad_accum_steps`` > 1 is refused).

    stmem-pretrain --config moco_v3:vit_base --workdir runs/moco_v3 --config.data.dir=...
"""

from stmem_jax.train.config import pretraining


def get_config(arg: str = "vit_base"):
    config = pretraining(arg or "vit_base", "moco_v3")
    config.data.augment = True
    config.train.update(weight_decay=0.1, b2=0.999, warmup_epochs=round(40 / 300 * config.train.epochs))
    if arg == "tiny":
        config.model.update(hidden_dim=512, out_dim=128)
    return config
