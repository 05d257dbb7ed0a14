"""Import and export of the public ST-MEM, MTAE and MLAE PyTorch checkpoints.

Two file kinds are understood (layouts in the project's spec): the full pre-training model
(keys ``encoder.*``, ``to_decoder_embedding.*``, ``decoder_blocks.*``, ...) and the encoder
alone (``to_patch_embedding.*``, ``block0.*``, ..., ``norm.*``, plus ``head.*`` for a classifier).
PyTorch Linear weights are (out, in); Flax kernels are (in, out).

The family is recognised by its tensors: ``sep_embedding`` (and ``lead_embeddings.*``) for
ST-MEM, ``cls_embedding`` for the baselines. MTAE and MLAE files have the same keys, so which
one a file holds is resolved, first rule that applies:

1. the ``kind`` argument (``stmem-convert import --kind``);
2. the file's ``config['model_name']`` (``mtae_vit_base_dec256d4b`` -> MTAE, ``mlae_...`` -> MLAE);
3. the shapes: with F token features (``to_patch_embedding.2.weight`` is (W, F)) and L tokens
   (``pos_embedding`` has L + 1 rows), MTAE when F is a multiple of 75 with F / 75 <= 12
   (patch P = 75, C = F / 75 leads, T = L * 75 samples), else MLAE (C = L leads, T = F).

For the baselines the file's ``config['model']`` (``seq_len``, ``patch_size``, ``num_leads``),
where present, replaces the sizes guessed from the shapes (an MTAE's P = F / C when only C is
given). Exported files carry such a
``config``, so they import back as the same model.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from stmem_jax.baselines import BaselineClassifier, BaselineMAE
from stmem_jax.layers import HEAD_DIM
from stmem_jax.model_dir import load_model, save_model
from stmem_jax.models import FAMILIES, PRESETS, count_parameters, create_model, family, init_variables, model_config
from stmem_jax.st_mem import STMEM, STMEMClassifier

PRETRAINING = (STMEM, BaselineMAE)  # models with fixed positional tables and a decoder
PATCH_SIZE = 75                     # the paper's patch size, assumed for MTAE files without a config
MAX_LEADS = 12


class Entry(NamedTuple):
    """One PyTorch tensor and where it lives in the Flax variables.

    kind: ``linear`` (transposed), ``tensor`` (as is, after ``ones`` leading singleton axes of the
    PyTorch tensor), ``row`` (row ``index`` of a stacked parameter) or ``fixed`` (a fixed table of
    the model, checked, not stored).
    """

    key: str
    path: tuple[str, ...]
    kind: str = "tensor"
    index: int = 0
    ones: int = 0


def _linear(key: str, path: tuple[str, ...]) -> Iterator[Entry]:
    yield Entry(f"{key}.weight", (*path, "kernel"), "linear")
    yield Entry(f"{key}.bias", (*path, "bias"))


def _norm(key: str, path: tuple[str, ...]) -> Iterator[Entry]:
    yield Entry(f"{key}.weight", (*path, "scale"))
    yield Entry(f"{key}.bias", (*path, "bias"))


def _block(key: str, path: tuple[str, ...]) -> Iterator[Entry]:
    yield from _norm(f"{key}.attn.norm", (*path, "attn_norm"))
    yield from _linear(f"{key}.attn.fn.to_qkv", (*path, "attn", "qkv"))
    yield from _linear(f"{key}.attn.fn.to_out.0", (*path, "attn", "out"))
    yield from _norm(f"{key}.ff.norm", (*path, "mlp_norm"))
    yield from _linear(f"{key}.ff.fn.net.0", (*path, "mlp", "fc1"))
    yield from _linear(f"{key}.ff.fn.net.3", (*path, "mlp", "fc2"))


def _patch_embedding(prefix: str) -> Iterator[Entry]:
    embed = ("encoder", "patch_embed")
    yield from _norm(f"{prefix}to_patch_embedding.1", (*embed, "norm_in"))
    yield from _linear(f"{prefix}to_patch_embedding.2", (*embed, "proj"))
    yield from _norm(f"{prefix}to_patch_embedding.3", (*embed, "norm_out"))


def layout(model: nn.Module, encoder_only: bool = False) -> list[Entry]:
    """Every tensor of the PyTorch file for ``model`` (STMEM, STMEMClassifier, BaselineMAE or
    BaselineClassifier)."""
    if not isinstance(model, (STMEM, STMEMClassifier, BaselineMAE, BaselineClassifier)):
        raise TypeError(f"only ST-MEM, MTAE and MLAE models have a public PyTorch layout, not {type(model).__name__}")
    pretraining = isinstance(model, PRETRAINING)
    prefix = "encoder." if pretraining and not encoder_only else ""
    pos = Entry(f"{prefix}pos_embedding", ("pos_embedding",), "fixed", ones=1) if pretraining \
        else Entry("pos_embedding", ("encoder", "pos_embedding"), ones=1)
    entries = [*_patch_embedding(prefix), pos]
    if isinstance(model, (STMEM, STMEMClassifier)):
        entries.append(Entry(f"{prefix}sep_embedding", ("encoder", "sep_embedding")))
        entries += [Entry(f"{prefix}lead_embeddings.{c}", ("encoder", "lead_embeddings"), "row", c)
                    for c in range(model.num_leads)]
    else:
        entries.append(Entry(f"{prefix}cls_embedding", ("encoder", "cls_token")))
    for i in range(model.depth):
        entries += _block(f"{prefix}block{i}", ("encoder", "blocks", f"block_{i}"))
    entries += _norm(f"{prefix}norm", ("encoder", "norm"))
    if not pretraining and model.num_classes and not encoder_only:
        entries += _linear("head", ("head",))
    if pretraining and not encoder_only:
        entries += _patch_embedding("")  # the public model holds the shared module twice
        entries += _linear("to_decoder_embedding", ("decoder_embed",))
        entries.append(Entry("mask_embedding", ("mask_token",), ones=2))
        entries.append(Entry("decoder_pos_embed", ("decoder_pos_embedding",), "fixed", ones=1))
        for j in range(model.decoder_depth):
            entries += _block(f"decoder_blocks.{j}", ("decoder", f"block_{j}"))
        entries += _norm("decoder_norm", ("decoder_norm",))
        entries += _linear("decoder_head", ("decoder_head",))
    return entries


def _require(state_dict: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in state_dict:
        raise KeyError(f"not a complete ST-MEM / MTAE / MLAE checkpoint: tensor {key!r} is missing")
    return state_dict[key]


def _count(state_dict: dict[str, np.ndarray], pattern: str) -> int:
    return len({m.group(1) for k in state_dict if (m := re.fullmatch(pattern, k))})


def _heads(state_dict: dict[str, np.ndarray], key: str) -> int:
    rows = _require(state_dict, key).shape[0]
    if rows % (3 * HEAD_DIM):
        raise ValueError(f"{key} has {rows} rows, not a multiple of 3 x {HEAD_DIM} (heads are {HEAD_DIM} wide)")
    return rows // (3 * HEAD_DIM)


def _family(state_dict: dict[str, np.ndarray], prefix: str, kind: str | None, config: dict[str, Any]) -> str | None:
    """``'st_mem'``, or ``'mtae'`` / ``'mlae'`` when the hint or the config's model name says it
    (None: decide by shapes); see the module docstring."""
    stmem = f"{prefix}sep_embedding" in state_dict
    if not stmem and f"{prefix}cls_embedding" not in state_dict:
        raise KeyError(f"neither {prefix}sep_embedding (ST-MEM) nor {prefix}cls_embedding (MTAE/MLAE) is in the file")
    if kind is not None and kind not in FAMILIES:
        raise ValueError(f"unknown model kind {kind!r}; choose from {sorted(FAMILIES)}")
    name = str(config.get("model_name", ""))
    kind = kind or next((k for k in FAMILIES if name.startswith(k)), None)
    if kind is not None and (kind == "st_mem") != stmem:
        raise ValueError(f"the file holds {prefix}{'sep' if stmem else 'cls'}_embedding, "
                         f"not the tensors of a {FAMILIES[kind].label} model ({kind!r})")
    return "st_mem" if stmem else kind


def _token_fields(kind: str | None, key: str, features: int, tokens: int, config: dict[str, Any]
                  ) -> tuple[str, dict[str, int]]:
    """MTAE or MLAE and (seq_len, patch_size, num_leads) from F features and L tokens."""
    given = {k: int(v) for k, v in (config.get("model") or {}).items()
             if k in ("seq_len", "patch_size", "num_leads")}
    if kind is None:
        kind = "mtae" if features % PATCH_SIZE == 0 and features // PATCH_SIZE <= MAX_LEADS else "mlae"
    if kind == "mlae":
        return kind, dict(seq_len=features, num_leads=tokens) | given
    patch = given.get("patch_size") or (features // given["num_leads"] if "num_leads" in given else PATCH_SIZE)
    if features % patch:
        raise ValueError(f"{key}: {features} token features are not {patch}-sample patches of whole leads (MTAE)")
    return kind, dict(seq_len=tokens * patch, patch_size=patch, num_leads=features // patch) | given


def infer_model(state_dict: dict[str, np.ndarray], kind: str | None = None,
                config: dict[str, Any] | None = None) -> nn.Module:
    """Builds the Flax model that matches the shapes of a PyTorch state dict; ``kind`` ('mtae' or
    'mlae') and the file's ``config`` decide between the baselines (see the module docstring)."""
    config = config if isinstance(config, dict) else {}
    pretraining = "to_decoder_embedding.weight" in state_dict
    prefix = "encoder." if pretraining else ""
    kind = _family(state_dict, prefix, kind, config)
    embed_key = f"{prefix}to_patch_embedding.2.weight"
    width, features = _require(state_dict, embed_key).shape
    rows = _require(state_dict, f"{prefix}pos_embedding").shape[-2]
    fields = dict(
        width=width,
        depth=_count(state_dict, rf"{re.escape(prefix)}block(\d+)\.attn\.norm\.weight"),
        heads=_heads(state_dict, f"{prefix}block0.attn.fn.to_qkv.weight"),
        mlp_dim=_require(state_dict, f"{prefix}block0.ff.fn.net.0.weight").shape[0],
    )
    if kind == "st_mem":  # a token is one patch of one lead: F = P, N + 2 table rows
        fields |= dict(seq_len=(rows - 2) * features, patch_size=features,
                       num_leads=_count(state_dict, rf"{re.escape(prefix)}lead_embeddings\.(\d+)"))
    else:
        kind, sizes = _token_fields(kind, embed_key, features, rows - 1, config)
        fields |= sizes
    if not pretraining:
        num_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
        return create_model(f"{kind}_classifier", num_classes=num_classes, **fields)
    decoder_width = state_dict["to_decoder_embedding.weight"].shape[0]
    decoder_mlp = _require(state_dict, "decoder_blocks.0.ff.fn.net.0.weight").shape[0]
    if decoder_mlp != 4 * decoder_width:
        raise ValueError(f"decoder_blocks.0.ff.fn.net.0.weight: MLP width {decoder_mlp} is not 4 x {decoder_width}")
    return create_model(kind, decoder_width=decoder_width,
                        decoder_depth=_count(state_dict, r"decoder_blocks\.(\d+)\.attn\.norm\.weight"),
                        decoder_heads=_heads(state_dict, "decoder_blocks.0.attn.fn.to_qkv.weight"), **fields)


def preset_name(model: nn.Module) -> str | None:
    """The preset whose dimensions ``model`` has, if any."""
    for name, dims in PRESETS.items():
        if all(getattr(model, k) == v for k, v in dims.items() if hasattr(model, k)):
            return name
    return None


def variables_from_state_dict(state_dict: dict[str, Any], *, strict: bool = True, kind: str | None = None,
                              config: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Flax model and variables from a PyTorch state dict (arrays or tensors by key).

    Every tensor is consumed or reported: a missing tensor, a wrong shape or a non-finite value
    raises an error naming the key; tensors the layout does not know raise too unless ``strict`` is False,
    in which case they are listed on stderr. ``kind`` and ``config``: see :func:`infer_model`.
    """
    state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
    model = infer_model(state_dict, kind, config)
    expected = flatten_dict(jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))["params"])
    fixed = {k: np.asarray(v) for k, v in model.fixed_tables().items()} \
        if isinstance(model, PRETRAINING) else {}
    params: dict[tuple[str, ...], np.ndarray] = {}
    sources: dict[tuple[str, ...], str] = {}
    entries = layout(model)
    for entry in entries:
        tensor = _require(state_dict, entry.key).astype(np.float32)
        if not np.isfinite(tensor).all():
            raise ValueError(f"{entry.key} holds {int((~np.isfinite(tensor)).sum())} NaN or infinite value(s); "
                             f"the checkpoint is damaged or its training diverged")
        if entry.kind == "fixed":
            table = fixed[entry.path[0]]
            if tensor.shape != (1,) * entry.ones + table.shape or not np.allclose(tensor.reshape(table.shape), table, atol=1e-5):
                raise ValueError(f"{entry.key} {tensor.shape} is not the fixed sine-cosine table this model uses")
            continue
        shape = tuple(expected[entry.path].shape)
        want = {"linear": shape[::-1], "row": shape[1:]}.get(entry.kind, (1,) * entry.ones + shape)
        if tensor.shape != want:
            raise ValueError(f"{entry.key}: shape {tensor.shape} does not fit {'/'.join(entry.path)} (expected {want})")
        value = tensor.T if entry.kind == "linear" else tensor.reshape(want[entry.ones:])
        if entry.kind == "row":
            params.setdefault(entry.path, np.zeros(expected[entry.path].shape, np.float32))[entry.index] = value
        elif entry.path in params:
            if not np.array_equal(params[entry.path], value):
                raise ValueError(f"{entry.key} differs from {sources[entry.path]}, which should hold the same tensor")
        else:
            params[entry.path], sources[entry.path] = value, entry.key
    unused = sorted(set(state_dict) - {e.key for e in entries})
    if unused and strict:
        raise ValueError(f"{len(unused)} tensor(s) not part of the {family(model).label} layout: "
                         f"{', '.join(unused[:10])}")
    if unused:
        print(f"ignored {len(unused)} tensor(s): {', '.join(unused)}", file=sys.stderr)
    return model, {"params": jax.tree.map(jax.numpy.asarray, unflatten_dict(params))}


def state_dict_from_variables(model: nn.Module, variables: dict[str, Any], *, encoder_only: bool = False
                              ) -> dict[str, np.ndarray]:
    """PyTorch-layout state dict (NumPy arrays) of a model with a :func:`layout`; ``encoder_only``
    gives the encoder file (no decoder, no head, keys without the ``encoder.`` prefix)."""
    params = flatten_dict(jax.tree.map(np.asarray, variables["params"]))
    fixed = model.fixed_tables() if isinstance(model, PRETRAINING) else {}
    state_dict = {}
    for entry in layout(model, encoder_only):
        value = np.asarray(fixed[entry.path[0]]) if entry.kind == "fixed" else params[entry.path]
        if entry.kind == "linear":
            value = value.T
        elif entry.kind == "row":
            value = value[entry.index]
        value = value.reshape((1,) * entry.ones + value.shape)
        state_dict[entry.key] = np.array(value, dtype=np.float32, order="C")
    return state_dict


def _torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError("reading or writing PyTorch checkpoints needs torch: pip install 'stmem-jax[torch]'") from error
    return torch


def load_torch_checkpoint(path: str | os.PathLike, *, strict: bool = True, kind: str | None = None
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """Reads a public ST-MEM / MTAE / MLAE ``.pth`` file (full pre-training model or encoder only)
    and returns the Flax model built with the preset inferred from the file, and its variables;
    ``kind`` ('mtae' or 'mlae') overrides the file's own hints (see the module docstring)."""
    torch = _torch()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    state_dict = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{path}: expected a state dict or a dict with a 'model' state dict")
    arrays = {k: v.detach().to(torch.float32).numpy() for k, v in state_dict.items()}
    config = content.get("config") if "model" in content else None
    try:
        return variables_from_state_dict(arrays, strict=strict, kind=kind, config=config)
    except (KeyError, ValueError) as error:
        raise type(error)(f"{path}: {error.args[0]}") from error


def save_torch_checkpoint(path: str | os.PathLike, model: nn.Module, variables: dict[str, Any], *,
                          encoder_only: bool = False) -> None:
    """Writes ``{'model': state_dict, 'epoch': 0, 'config': ...}`` in the public layout, usable by
    PyTorch code; ``config`` holds ``model_name`` (the family) and ``model`` (the input sizes)."""
    torch = _torch()
    state_dict = state_dict_from_variables(model, variables, encoder_only=encoder_only)
    config = {"model_name": family(model).pretraining,
              "model": {k: getattr(model, k) for k in ("seq_len", "patch_size", "num_leads")}}
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    torch.save({"model": tensors, "epoch": 0, "config": config}, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stmem-convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="PyTorch .pth file -> model directory (orbax) for our trainers")
    imp.add_argument("checkpoint", help="public ST-MEM, MTAE or MLAE .pth file")
    imp.add_argument("output", help="directory to write")
    imp.add_argument("--allow-unused", action="store_true", help="list unknown tensors instead of failing")
    imp.add_argument("--kind", choices=sorted(FAMILIES),
                     help="model family, overriding the file's config and the shape rule (MTAE vs MLAE)")
    exp = sub.add_parser("export", help="model directory -> PyTorch .pth file in the public layout")
    exp.add_argument("model_dir", help="directory written by 'stmem-convert import' or a trainer")
    exp.add_argument("output", help=".pth file to write")
    exp.add_argument("--encoder-only", action="store_true", help="write the encoder file only")
    for command in (imp, exp):
        command.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)

    if args.command == "import":
        model, variables = load_torch_checkpoint(args.checkpoint, strict=not args.allow_unused, kind=args.kind)
        save_model(args.output, model, variables, overwrite=args.overwrite,
                   metadata={"source": os.path.abspath(args.checkpoint)})
    else:
        if os.path.exists(args.output) and not args.overwrite:
            parser.error(f"{args.output} exists; pass --overwrite to replace it")
        model, variables = load_model(args.model_dir)
        save_torch_checkpoint(args.output, model, variables, encoder_only=args.encoder_only)
    print(f"{args.command}ed {type(model).__name__} (preset {preset_name(model) or 'custom'}, "
          f"kind {model_config(model)['kind']}, {count_parameters(model, variables) / 1e6:.2f} M parameters) "
          f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
