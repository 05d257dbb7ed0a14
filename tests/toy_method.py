"""A pre-training method defined outside the package, as a researcher adds one: this module is
its whole definition. ``--config.method=tests.toy_method`` imports it.

ST-MEM with a Polyak-averaged copy of the parameters as extra training state: the average
follows the parameters with a cosine momentum schedule (``model.average_momentum``, 0.99, at the
start, 1 at the end, as MoCo v3's momentum encoder) and the validation metric is the averaged
model's reconstruction loss. The test suite uses it to check that a method's extra state is
checkpointed, resumed exactly and sharded like the parameters, and that a method's own field is
checked against the range it declares.
"""

import jax
import jax.numpy as jnp

from stmem_jax import models
from stmem_jax.methods import register
from stmem_jax.methods.st_mem import STMEM, StMem

NAME = __name__  # "tests.toy_method": the registry resolves a dotted name by importing its module


class AveragedSTMEM(STMEM):
    average_momentum: float = 0.99


class AveragedStMem(StMem):
    name = NAME
    label = "ST-MEM (averaged)"
    paper = "a test of the method interface"

    def config(self):
        fields = super().config()
        fields.average_momentum = 0.99  # the average's momentum at the start (cosine to 1)
        return fields

    def ranges(self):
        return super().ranges() | {"average_momentum": (0, 1, True)}

    def init_extra(self, model, params):
        return jax.tree.map(jnp.array, params)

    def update_extra(self, model, params, extra, progress, aux=None):
        momentum = 1.0 - (1.0 - model.average_momentum) * (1.0 + jnp.cos(jnp.pi * progress)) / 2.0
        return jax.tree.map(lambda avg, p: momentum * avg + (1.0 - momentum) * p, extra, params)

    def validation(self, model, params, extra, rows, leads):
        return super().validation(model, extra, None, rows, leads)


models.register_model(NAME, AveragedSTMEM)
register(AveragedStMem())
