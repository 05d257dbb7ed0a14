"""CPC for ECG, the "4FC+2LSTM+2FC" network of Mehari and Strodthoff (2022, "Self-supervised
representation learning from 12-lead ECG data"): its pre-training model, its classifier and the
method (the facts in the project's spec, ``baselines.md``, section "CPC for ECG").

- Encoder: ``encoder_layers`` (4) pointwise layers (a Dense over the leads of each sample, i.e. a
  kernel-1 convolution, no bias: BatchNorm's offset follows) ``num_leads -> width`` (512), each
  with BatchNorm and ReLU: one latent z_t per input sample. Context: ``depth`` (2) unidirectional
  LSTM layers of ``width`` units (``nn.OptimizedLSTMCell`` scanned by ``nn.RNN``) giving c_t.
  Prediction: Dense(width -> width), no bias, on c_t.
- Loss (:func:`cpc_losses`), horizon k = 12: for every t < S - k the positive is z_{t+k}, the
  negatives 128 positions of the same sequence other than t + k, drawn with replacement (by
  :meth:`Cpc.randomness`, per example); score <W c_t, z>, no temperature, no normalisation;
  cross-entropy per t, averaged over the batch and summed over t. The scores are one
  (S - k, S) matrix per example from which the positive and the negatives are gathered [choice:
  a matmul, not a (B, S, 128, width) gather; it costs 2 S^2 width FLOPs per example].
- BatchNorm [choice]: pre-training normalises with the statistics of the global batch (every
  example and time step; the step is never split: ``splittable = False``); the running averages
  (``MOMENTUM`` 0.9, PyTorch's default 0.1 update) are the method's ``extra`` state, updated from
  the loss's aux with the batch's mean and its unbiased variance (n / (n - 1) x the biased one
  that normalises the batch, n = examples x time steps), as PyTorch's BatchNorm. Validation uses
  the running averages (the exported encoder's normalisation; padding examples then change
  nothing). The exported encoder holds them as parameters ``mean`` / ``var`` (:meth:`Cpc.encoder`
  reads them from ``variables['extra']``, the state's extra) that its BatchNorms use through
  ``stop_gradient``: they do not train in fine-tuning either (the downstream state is parameters
  only; weight decay, even ``train.weight_decay_on=all``, never touches them: ``optim.decay_mask``).
- Classifier (``cpc_classifier``): the encoder and LSTM, concat pooling over time [mean, max, last]
  (3 x width), then BN, Dropout 0.25, Dense(-> 512), ReLU, BN, Dropout 0.5, Dense(-> classes). The
  head's BatchNorms cannot keep running statistics (parameters only) [choice]: each is a learned
  scale and offset over fixed statistics (mean 0, variance 1, frozen parameters). ``linear_head``:
  the head is one Dense on the pooled features (the spec's linear probe). ``num_classes`` 0
  returns the pooled features.

Inputs holding fewer leads enter zero-filled at the standard positions of their leads
(``leads``), in pre-training and downstream alike (as MTAE and MLAE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from stmem_jax import models
from stmem_jax.core.leads import lead_indices
from stmem_jax.methods.base import Method, Rows, register

HORIZON = 12       # k: the step predicted ahead
NEGATIVES = 128    # negatives per prediction
MOMENTUM = 0.9     # running statistics: new = MOMENTUM * old + (1 - MOMENTUM) * batch (PyTorch's 0.1 update)
NORM_EPS = 1e-5
HIDDEN = 512       # the classifier head's hidden width
HEAD_DROPOUT = (0.25, 0.5)
POOLS = 3          # concat pooling: mean, max, last


def cpc_scores(z: jax.Array, pred: jax.Array, negatives: jax.Array, horizon: int = HORIZON) -> jax.Array:
    """Scores (B, S - k, 1 + N): column 0 <pred_t, z_{t+k}>, then <pred_t, z_{negatives[t, n]}>, from
    latents ``z`` (B, S, D), predictions ``pred`` = W c_t (B, S, D) and positions ``negatives``
    (B, S - k, N)."""
    steps = z.shape[1] - horizon
    if steps < 1 or negatives.shape[:2] != (z.shape[0], steps):
        raise ValueError(f"negatives of shape {negatives.shape} do not fit latents {z.shape} at horizon {horizon}")
    table = jnp.einsum("btd,bsd->bts", pred[:, :steps].astype(jnp.float32), z.astype(jnp.float32))
    positives = jnp.broadcast_to(jnp.arange(steps)[:, None] + horizon, (z.shape[0], steps, 1))
    return jnp.take_along_axis(table, jnp.concatenate([positives, negatives], axis=-1), axis=-1)


def cpc_losses(z: jax.Array, pred: jax.Array, negatives: jax.Array, horizon: int = HORIZON) -> jax.Array:
    """Per-example CPC loss (B,): the cross-entropy of the positive among 1 + N scores, summed over
    t < S - k (its mean over the batch is the training loss: per t a batch mean, summed over t)."""
    scores = cpc_scores(z, pred, negatives, horizon)
    return (jax.nn.logsumexp(scores, axis=-1) - scores[..., 0]).sum(axis=1)


def draw_negatives(key: jax.Array, batch: int, seq_len: int, count: int = NEGATIVES, horizon: int = HORIZON
                   ) -> jax.Array:
    """(batch, S - k, count) positions drawn uniformly with replacement among the S - 1 positions
    other than t + k."""
    steps = seq_len - horizon
    drawn = jax.random.randint(key, (batch, steps, count), 0, seq_len - 1)
    return drawn + (drawn >= (jnp.arange(steps) + horizon)[None, :, None])


class Norm(nn.Module):
    """BatchNorm over every axis but the last. ``frozen``: statistics are parameters ``mean`` /
    ``var`` used through stop_gradient; else the batch's or ``stats`` given. Returns (y, the batch's
    mean and unbiased variance for the running averages, or None)."""

    frozen: bool = False
    init_stats: tuple[float, float] = (0.0, 1.0)

    @nn.compact
    def __call__(self, x: jax.Array, stats: tuple[jax.Array, jax.Array] | None = None):
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        x32 = x.astype(jnp.float32)
        if self.frozen:
            mean = jax.lax.stop_gradient(self.param("mean", nn.initializers.constant(self.init_stats[0]), (features,)))
            var = jax.lax.stop_gradient(self.param("var", nn.initializers.constant(self.init_stats[1]), (features,)))
            batch = None
        elif stats is None:
            axes = tuple(range(x.ndim - 1))
            mean = x32.mean(axes)
            var = jnp.square(x32 - mean).mean(axes)  # biased: normalises the batch
            n = x32.size // features
            batch = (mean, var * (n / max(n - 1, 1)))
        else:
            (mean, var), batch = stats, None
        y = (x32 - mean) * jax.lax.rsqrt(var + NORM_EPS) * scale + bias
        return y.astype(x.dtype), batch


class CpcSettings(nn.Module):
    """The sizes shared by CPC's models (no parameters of their own)."""

    seq_len: int = 2250            # samples per example (the recipe's 250 Hz crops; 1000 at 100 Hz)
    num_leads: int = 12
    width: int = 512              # pointwise layers' and LSTM units
    depth: int = 2                # LSTM layers
    encoder_layers: int = 4       # pointwise layers
    horizon: int = HORIZON
    negatives: int = NEGATIVES
    dtype: Any = jnp.float32
    remat: bool = False           # recompute each LSTM layer in the backward pass (less memory)

    patch_size = 1                # one latent per sample (models.checked asks every model for it)

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CpcSettings.__dataclass_fields__
                if name not in ("parent", "name")}

    def full_leads(self, series: jax.Array, leads: Any = None) -> jax.Array:
        """(B, C, T) holding ``leads`` (names or standard indices; None: the first C) -> (B, num_leads, T)."""
        if series.ndim != 3 or series.shape[-1] != self.seq_len:
            raise ValueError(f"expected series of shape (batch, leads, {self.seq_len}), got {series.shape}")
        indices = lead_indices(leads, series.shape[1], num_leads=self.num_leads)
        if indices == tuple(range(self.num_leads)):
            return series
        full = jnp.zeros((series.shape[0], self.num_leads, series.shape[2]), series.dtype)
        return full.at[:, jnp.asarray(indices)].set(series)

    def context_flops(self) -> float:
        """Forward FLOPs of one example's pointwise layers and LSTM."""
        w, s = self.width, self.seq_len
        pointwise = 2 * s * (self.num_leads * w + (self.encoder_layers - 1) * w * w)
        lstm = self.depth * s * 2 * 4 * (w + w) * w
        return float(pointwise + lstm)

    def context_activation(self) -> int:
        """Elements of one example's encoder and LSTM activations (each layer's output, the LSTM's gates)."""
        return self.seq_len * self.width * (2 * self.encoder_layers + self.depth * 6)


class LstmLayer(nn.Module):
    """One unidirectional LSTM layer over (B, T, F): ``nn.OptimizedLSTMCell`` scanned over time."""

    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.RNN(nn.OptimizedLSTMCell(self.width, dtype=self.dtype, name="cell"))(x)


class CpcEncoder(CpcSettings):
    """Pointwise layers with BatchNorm and ReLU, then the LSTM: (B, C, T) of all leads -> (z, c, batch
    statistics) with z, c (B, T, width). ``frozen``: the BatchNorms' statistics are parameters."""

    frozen: bool = False

    @nn.compact
    def __call__(self, series: jax.Array, running: dict[str, Any] | None = None):
        x = series.transpose(0, 2, 1).astype(self.dtype)
        stats = {}
        for i in range(self.encoder_layers):
            x = nn.Dense(self.width, use_bias=False, dtype=self.dtype, name=f"dense_{i}")(x)
            name = f"norm_{i}"
            given = None if running is None else (running[name]["mean"], running[name]["var"])
            x, batch = Norm(self.frozen, name=name)(x, given)
            if batch is not None:
                stats[name] = {"mean": batch[0], "var": batch[1]}
            x = nn.relu(x)
        z, c = x, x
        layer = nn.remat(LstmLayer) if self.remat else LstmLayer
        for i in range(self.depth):
            c = layer(self.width, self.dtype, name=f"lstm_{i}")(c)
        return z, c, stats


class CpcModel(CpcSettings):
    """CPC pre-training model. ``apply(variables, series, negatives=..., running=..., leads=...)`` ->
    ``{'z', 'pred', 'stats'}`` and, given ``negatives`` (B, S - k, N), ``'losses'`` (B,) and ``'loss'``;
    ``running`` (the BatchNorms' running statistics) normalises with them instead of the batch's."""

    def setup(self):
        self.encoder = CpcEncoder(**self.settings())
        self.predictor = nn.Dense(self.width, use_bias=False, dtype=self.dtype, name="predictor")

    def __call__(self, series: jax.Array, *, negatives: jax.Array | None = None, running: Any = None,
                 leads: Any = None) -> dict[str, Any]:
        z, c, stats = self.encoder(self.full_leads(series, leads), running)
        out = {"z": z, "pred": self.predictor(c), "stats": stats}
        if negatives is not None:
            out["losses"] = cpc_losses(out["z"], out["pred"], negatives, self.horizon)
            out["loss"] = out["losses"].mean()
        return out

    def encoder_tokens(self, channels: int) -> int:
        return self.seq_len

    def activation(self, channels: int) -> int:
        steps = self.seq_len - self.horizon
        return self.context_activation() + self.seq_len * self.width + steps * (self.seq_len + 1 + self.negatives)

    def forward_flops(self, channels: int) -> float:
        steps = self.seq_len - self.horizon
        return self.context_flops() + 2 * self.seq_len * self.width ** 2 + 2 * steps * self.seq_len * self.width

    def fixed_tables(self) -> dict[str, jax.Array]:
        return {}


class CpcHead(nn.Module):
    """BN, Dropout 0.25, Dense(-> 512), ReLU, BN, Dropout 0.5, Dense(-> classes); the BatchNorms a
    learned scale and offset over fixed statistics (mean 0, variance 1)."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i, rate in enumerate(HEAD_DROPOUT):
            x, _ = Norm(frozen=True, name=f"norm_{i}")(x)
            x = nn.Dropout(rate)(x, deterministic=not train)
            x = nn.Dense(HIDDEN if i == 0 else self.num_classes, dtype=self.dtype, name=f"dense_{i}")(x)
            if i == 0:
                x = nn.relu(x)
        return x


class CpcClassifier(CpcSettings):
    """CPC's classifier: the encoder (frozen BatchNorm statistics) and LSTM, concat pooling [mean,
    max, last] over time, the head (:class:`CpcHead`, or one Dense with ``linear_head``);
    ``num_classes`` 0 returns the pooled features (B, 3 x width). ``dropout`` and ``drop_path``
    (the downstream command sets them on every classifier) change nothing: the head's dropout
    rates are the paper's."""

    num_classes: int = 0
    linear_head: bool = False
    dropout: float = 0.0
    drop_path: float = 0.0

    @property
    def feature_size(self) -> int:
        return POOLS * self.width

    def setup(self):
        self.encoder = CpcEncoder(**self.settings(), frozen=True)
        if self.num_classes:
            self.head = nn.Dense(self.num_classes, dtype=self.dtype, name="head") if self.linear_head \
                else CpcHead(self.num_classes, self.dtype, name="head")

    def features(self, series: jax.Array) -> jax.Array:
        _, c, _ = self.encoder(series)
        c = c.astype(jnp.float32)
        return jnp.concatenate([c.mean(axis=1), c.max(axis=1), c[:, -1]], axis=-1)

    def __call__(self, series: jax.Array, *, leads: Any = None, train: bool = False) -> jax.Array:
        x = self.features(self.full_leads(series, leads))
        if not self.num_classes:
            return x
        return self.head(x) if self.linear_head else self.head(x, train)

    def encoder_tokens(self, channels: int) -> int:
        return self.seq_len

    def activation(self, channels: int) -> int:
        return self.context_activation() + self.feature_size + HIDDEN

    def forward_flops(self, channels: int) -> float:
        head = 0 if not self.num_classes else 2 * self.feature_size * self.num_classes if self.linear_head \
            else 2 * (self.feature_size * HIDDEN + HIDDEN * self.num_classes)
        return self.context_flops() + head


models.register_model("cpc", CpcModel)
models.register_model("cpc_classifier", CpcClassifier)

SIZES = ("width", "depth", "encoder_layers", "horizon", "negatives")
DEFAULTS = dict(width=512, depth=2, encoder_layers=4, horizon=HORIZON, negatives=NEGATIVES)  # the paper's
TINY = dict(width=32, depth=2, encoder_layers=4, horizon=HORIZON, negatives=32)              # model.preset tiny


class Cpc(Method):
    """Contrastive predictive coding over the samples of each ECG (one latent per sample)."""

    name = "cpc"
    label = "CPC"
    paper = "Mehari and Strodthoff, Self-supervised representation learning from 12-lead ECG data (2022)"
    classifier = "cpc_classifier"
    inputs = ("series",)
    splittable = False  # BatchNorm over the global batch couples its examples

    def config(self) -> ml_collections.ConfigDict:
        from ml_collections.config_dict import placeholder

        fields = ml_collections.ConfigDict()
        fields.encoder_layers = placeholder(int)  # pointwise layers (4); width: their and the LSTM's units
        fields.horizon = placeholder(int)         # k, the step predicted ahead (12); depth: LSTM layers (2)
        fields.negatives = placeholder(int)       # negatives per prediction (128)
        return fields

    def ranges(self):
        return {"encoder_layers": (1, None, True), "horizon": (1, None, True), "negatives": (1, None, True)}

    def check(self, config):
        """The horizon and the negatives within the latent sequence (one latent per sample of the crop)."""
        sizes, steps = self.sizes(config), config.data.crop_samples
        problems = []
        if sizes["horizon"] >= steps:
            problems.append(f"model.horizon={sizes['horizon']} leaves nothing to predict in a latent sequence of "
                            f"data.crop_samples={steps} steps")
        if sizes["negatives"] > steps - 1:
            problems.append(f"model.negatives={sizes['negatives']} is more than the {steps - 1} other steps of a "
                            f"latent sequence of data.crop_samples={steps}")
        return problems

    def sizes(self, config: ml_collections.ConfigDict) -> dict[str, int]:
        """The paper's sizes (``model.preset`` tiny: width 32, 32 negatives); ``model.width``,
        ``depth`` (LSTM layers), ``encoder_layers``, ``horizon``, ``negatives`` override them."""
        m = config.model
        return (TINY if m.preset == "tiny" else DEFAULTS) | {k: m.get(k) for k in SIZES if m.get(k) is not None}

    def model(self, config: ml_collections.ConfigDict, lead_ids: Sequence[int]) -> nn.Module:
        """The model of :meth:`sizes` for ``data.crop_samples``-sample inputs."""
        m = config.model
        return models.create_model(self.name, m.preset, seq_len=config.data.crop_samples,
                                   dtype=jnp.dtype(m.dtype), remat=m.remat, **self.sizes(config))

    def init_extra(self, model, params):
        """The running statistics, ``{norm_i: {'mean': 0, 'var': 1}}``."""
        return {f"norm_{i}": {"mean": jnp.zeros((model.width,), jnp.float32),
                              "var": jnp.ones((model.width,), jnp.float32)} for i in range(model.encoder_layers)}

    def randomness(self, model, rows: Rows, key: jax.Array) -> Rows:
        return {"negatives": draw_negatives(key, rows["series"].shape[0], model.seq_len, model.negatives,
                                            model.horizon)}

    def loss(self, model, params, extra, rows, leads):
        """The CPC loss with the batch's statistics; aux: those statistics."""
        out = model.apply({"params": params}, rows["series"], negatives=rows["negatives"], leads=leads)
        return out["loss"], out["stats"]

    def update_extra(self, model, params, extra, progress, aux=None):
        if aux is None:
            return extra
        return jax.tree.map(lambda old, new: MOMENTUM * old + (1 - MOMENTUM) * jax.lax.stop_gradient(new),
                            extra, aux)

    def validation(self, model, params, extra, rows, leads):
        """Each example's CPC loss (sum over t), normalised with the running statistics."""
        return model.apply({"params": params}, rows["series"], negatives=rows["negatives"], running=extra,
                           leads=leads)["losses"]

    def encoder(self, model, variables):
        """The classifier kind's encoder with the pre-trained weights; the running statistics
        (``variables['extra']``, the method's state: a random encoder's are the initial ones) become
        its BatchNorms' ``mean`` / ``var`` parameters. Variables without them are refused: the
        encoder would normalise with mean 0 and variance 1."""
        encoder = self.classifier_model(model)
        running = variables.get("extra")
        if running is None:
            raise ValueError("CPC's encoder needs the BatchNorm running statistics (the method's extra state) and "
                             "these variables hold none (a CPC model/ written before they were saved with it): use "
                             "the run's encoder/")
        params = dict(variables["params"]["encoder"])
        for name, stats in running.items():
            params[name] = {**params[name], "mean": stats["mean"], "var": stats["var"]}
        return encoder, {"params": {"encoder": params}}


register(Cpc())
