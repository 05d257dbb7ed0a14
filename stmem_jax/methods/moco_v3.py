"""MoCo v3 (Chen, Xie and He, ICCV 2021) on 12-lead ECGs, the ST-MEM paper's contrastive baseline
(facts and choices: the project's ``baselines.md``).

Two augmented views of each example (``view1``, ``view2``: independent crops, each through the
ECG RandAugment). Base encoder f (the ViT of ``stmem_jax.methods.contrastive``), projector g
(Dense 4096, BN, ReLU, Dense 4096, BN, ReLU, Dense 256, BN without scale/offset; Dense layers
without bias), predictor h (Dense 4096, BN, ReLU, Dense 256, BN without scale/offset); the
momentum encoder and projector, an exponential average of f and g, are the method's extra state.
q = normalize(h(g(f(x)))), k = normalize(g_m(f_m(x))); ctr(q, k) = CE(q k^T / tau, the diagonal)
x 2 tau over the keys of the global batch; L = ctr(q1, k2) + ctr(q2, k1), tau = 0.2. Momentum
m = 1 - (1 - 0.99)(1 + cos(pi t / T)) / 2. The patch embedding stays at its random initialisation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax.traverse_util import path_aware_map

from stmem_jax import models
from stmem_jax.methods.base import register
from stmem_jax.methods.contrastive import MLP, ContrastiveMethod, ContrastiveViT, info_nce, normalize

MOMENTUM_KEYS = ("encoder", "projector")  # the parts the momentum copy holds


class MoCoV3Model(ContrastiveViT):
    """``apply(variables, series, leads=...)``: the predictor's output h(g(f(x))), (B, out_dim);
    ``method='project'``: the projector's g(f(x)) (what the momentum copy computes)."""

    hidden_dim: int = 4096
    out_dim: int = 256
    temperature: float = 0.2
    momentum: float = 0.99  # at the start; it follows a half cosine to 1
    freeze_patch_embedding: bool = True

    def setup(self):
        super().setup()
        self.projector = MLP((self.hidden_dim, self.hidden_dim, self.out_dim))
        self.predictor = MLP((self.hidden_dim, self.out_dim))

    def project(self, series: jax.Array, leads: Any = None) -> jax.Array:
        return self.projector(self.represent(series, leads))

    def __call__(self, series: jax.Array, *, leads: Any = None) -> jax.Array:
        return self.predictor(self.project(series, leads))

    def forward_flops(self, channels: int) -> float:
        """A third of a step's FLOPs per example (the convention of 3 x forward): both views through
        the online encoder, projector and predictor, forward and backward, and through the momentum
        encoder and projector, forward only."""
        projector = 2 * (self.width * self.hidden_dim + self.hidden_dim ** 2 + self.hidden_dim * self.out_dim)
        predictor = 4 * self.out_dim * self.hidden_dim
        online, momentum = 2 * (self.view_flops() + projector + predictor), 2 * (self.view_flops() + projector)
        return online + momentum / 3


models.register_model("moco_v3", MoCoV3Model)


def moco_loss(q1: jax.Array, q2: jax.Array, k1: jax.Array, k2: jax.Array, temperature: float,
              valid: jax.Array | None = None) -> jax.Array:
    """Per-example symmetric MoCo v3 loss, (B,): (ctr(q1, k2) + ctr(q2, k1)) x 2 tau over normalised
    rows; its mean is the loss."""
    return (info_nce(q1, k2, temperature, valid) + info_nce(q2, k1, temperature, valid)) * 2 * temperature


class MoCoV3(ContrastiveMethod):
    """Two augmented views, a momentum encoder, symmetric InfoNCE over the global batch."""

    name = "moco_v3"
    label = "MoCo v3"
    paper = "Chen, Xie and He, ICCV 2021 (arXiv 2104.02057), as the ST-MEM paper's baseline"
    inputs = ("view1", "view2")

    def config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dict(
            hidden_dim=4096,           # projector and predictor hidden width
            out_dim=256,               # projector and predictor output
            temperature=0.2,           # InfoNCE temperature tau
            momentum=0.99,             # momentum encoder's momentum at the start (cosine to 1)
            freeze_patch_embedding=True,  # the patch embedding stays at its random initialisation
        ))

    def ranges(self):
        return {"hidden_dim": (1, None, True), "out_dim": (1, None, True), "temperature": (0, None, False),
                "momentum": (0, 1, True)}

    def init_extra(self, model, params):
        """The momentum encoder and projector, copies of the online ones."""
        return {k: jax.tree.map(jnp.array, params[k]) for k in MOMENTUM_KEYS}

    def frozen(self, model, params):
        if not model.freeze_patch_embedding:
            return None
        return path_aware_map(lambda path, _: path[:2] == ("encoder", "patch_embed"), params)

    def _loss(self, model, params, extra, rows, leads, valid=None):
        def queries(x):
            return normalize(model.apply({"params": params}, x, leads=leads))

        def keys(x):
            return jax.lax.stop_gradient(normalize(model.apply({"params": extra}, x, leads=leads,
                                                               method=MoCoV3Model.project)))

        return moco_loss(queries(rows["view1"]), queries(rows["view2"]), keys(rows["view1"]), keys(rows["view2"]),
                         model.temperature, valid)

    def loss(self, model, params, extra, rows, leads):
        return self._loss(model, params, extra, rows, leads).mean()

    def update_extra(self, model, params, extra, progress, aux=None):
        m = 1.0 - (1.0 - model.momentum) * (1.0 + jnp.cos(jnp.pi * progress)) / 2.0
        return {k: jax.tree.map(lambda e, p: m * e + (1.0 - m) * p, extra[k], params[k]) for k in MOMENTUM_KEYS}

    def validation(self, model, params, extra, rows, leads):
        """Each example's loss against the keys of its validation batch."""
        return self._loss(model, params, extra, rows, leads, rows["valid"])


register(MoCoV3())
