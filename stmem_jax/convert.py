"""Import and export of the public ST-MEM PyTorch checkpoints.

Two file kinds are understood (layouts in the project's spec): the full pre-training model
(keys ``encoder.*``, ``to_decoder_embedding.*``, ``decoder_blocks.*``, ...) and the encoder
alone (``to_patch_embedding.*``, ``block0.*``, ..., ``norm.*``, plus ``head.*`` for a classifier).
PyTorch Linear weights are (out, in); Flax kernels are (in, out).
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

from stmem_jax.model_dir import load_model, save_model
from stmem_jax.layers import HEAD_DIM
from stmem_jax.models import PRESETS, count_parameters, create_model, init_variables
from stmem_jax.st_mem import STMEM, STMEMClassifier


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
    """Every tensor of the PyTorch file for ``model`` (an STMEM or STMEMClassifier)."""
    if isinstance(model, STMEM) and not encoder_only:
        prefix, pos = "encoder.", Entry("encoder.pos_embedding", ("pos_embedding",), "fixed", ones=1)
    elif isinstance(model, STMEM):
        prefix, pos = "", Entry("pos_embedding", ("pos_embedding",), "fixed", ones=1)
    elif isinstance(model, STMEMClassifier):
        prefix, pos = "", Entry("pos_embedding", ("encoder", "pos_embedding"), ones=1)
    else:
        raise TypeError(f"only ST-MEM models have a public PyTorch layout, not {type(model).__name__}")
    entries = [*_patch_embedding(prefix), pos, Entry(f"{prefix}sep_embedding", ("encoder", "sep_embedding"))]
    entries += [Entry(f"{prefix}lead_embeddings.{c}", ("encoder", "lead_embeddings"), "row", c)
                for c in range(model.num_leads)]
    for i in range(model.depth):
        entries += _block(f"{prefix}block{i}", ("encoder", "blocks", f"block_{i}"))
    entries += _norm(f"{prefix}norm", ("encoder", "norm"))
    if isinstance(model, STMEMClassifier) and model.num_classes and not encoder_only:
        entries += _linear("head", ("head",))
    if isinstance(model, STMEM) and not encoder_only:
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
        raise KeyError(f"not an ST-MEM checkpoint: tensor {key!r} is missing")
    return state_dict[key]


def _count(state_dict: dict[str, np.ndarray], pattern: str) -> int:
    return len({m.group(1) for k in state_dict if (m := re.fullmatch(pattern, k))})


def _heads(state_dict: dict[str, np.ndarray], key: str) -> int:
    rows = _require(state_dict, key).shape[0]
    if rows % (3 * HEAD_DIM):
        raise ValueError(f"{key} has {rows} rows, not a multiple of 3 x {HEAD_DIM} (heads are {HEAD_DIM} wide)")
    return rows // (3 * HEAD_DIM)


def infer_model(state_dict: dict[str, np.ndarray]) -> nn.Module:
    """Builds the Flax model that matches the shapes of a PyTorch state dict."""
    pretraining = "to_decoder_embedding.weight" in state_dict
    prefix = "encoder." if pretraining else ""
    width, patch_size = _require(state_dict, f"{prefix}to_patch_embedding.2.weight").shape
    num_patches = _require(state_dict, f"{prefix}pos_embedding").shape[-2] - 2
    fields = dict(
        seq_len=num_patches * patch_size, patch_size=patch_size, width=width,
        depth=_count(state_dict, rf"{re.escape(prefix)}block(\d+)\.attn\.norm\.weight"),
        heads=_heads(state_dict, f"{prefix}block0.attn.fn.to_qkv.weight"),
        mlp_dim=_require(state_dict, f"{prefix}block0.ff.fn.net.0.weight").shape[0],
        num_leads=_count(state_dict, rf"{re.escape(prefix)}lead_embeddings\.(\d+)"),
    )
    if not pretraining:
        num_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
        return create_model("st_mem_classifier", num_classes=num_classes, **fields)
    decoder_width = state_dict["to_decoder_embedding.weight"].shape[0]
    decoder_mlp = _require(state_dict, "decoder_blocks.0.ff.fn.net.0.weight").shape[0]
    if decoder_mlp != 4 * decoder_width:
        raise ValueError(f"decoder_blocks.0.ff.fn.net.0.weight: MLP width {decoder_mlp} is not 4 x {decoder_width}")
    return create_model("st_mem", decoder_width=decoder_width,
                        decoder_depth=_count(state_dict, r"decoder_blocks\.(\d+)\.attn\.norm\.weight"),
                        decoder_heads=_heads(state_dict, "decoder_blocks.0.attn.fn.to_qkv.weight"), **fields)


def preset_name(model: nn.Module) -> str | None:
    """The preset whose dimensions ``model`` has, if any."""
    for name, dims in PRESETS.items():
        if all(getattr(model, k) == v for k, v in dims.items() if hasattr(model, k)):
            return name
    return None


def variables_from_state_dict(state_dict: dict[str, Any], *, strict: bool = True
                              ) -> tuple[nn.Module, dict[str, Any]]:
    """Flax model and variables from a PyTorch state dict (arrays or tensors by key).

    Every tensor is consumed or reported: a missing tensor or a wrong shape raises an error
    naming the key; tensors the layout does not know raise too unless ``strict`` is False,
    in which case they are listed on stderr.
    """
    state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
    model = infer_model(state_dict)
    expected = flatten_dict(jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))["params"])
    fixed = {k: np.asarray(v) for k, v in model.fixed_tables().items()} \
        if isinstance(model, STMEM) else {}
    params: dict[tuple[str, ...], np.ndarray] = {}
    sources: dict[tuple[str, ...], str] = {}
    entries = layout(model)
    for entry in entries:
        tensor = _require(state_dict, entry.key).astype(np.float32)
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
        raise ValueError(f"{len(unused)} tensor(s) not part of the ST-MEM layout: {', '.join(unused[:10])}")
    if unused:
        print(f"ignored {len(unused)} tensor(s): {', '.join(unused)}", file=sys.stderr)
    return model, {"params": jax.tree.map(jax.numpy.asarray, unflatten_dict(params))}


def state_dict_from_variables(model: nn.Module, variables: dict[str, Any], *, encoder_only: bool = False
                              ) -> dict[str, np.ndarray]:
    """PyTorch-layout state dict (NumPy arrays) of an STMEM or STMEMClassifier; ``encoder_only``
    gives the encoder file (no decoder, no head, keys without the ``encoder.`` prefix)."""
    params = flatten_dict(jax.tree.map(np.asarray, variables["params"]))
    fixed = model.fixed_tables() if isinstance(model, STMEM) else {}
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


def load_torch_checkpoint(path: str | os.PathLike, *, strict: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Reads a public ST-MEM ``.pth`` file (full pre-training model or encoder only) and returns
    the Flax model built with the preset inferred from the file, and its variables."""
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
    try:
        return variables_from_state_dict(arrays, strict=strict)
    except (KeyError, ValueError) as error:
        raise type(error)(f"{path}: {error.args[0]}") from error


def save_torch_checkpoint(path: str | os.PathLike, model: nn.Module, variables: dict[str, Any], *,
                          encoder_only: bool = False) -> None:
    """Writes ``{'model': state_dict, 'epoch': 0}`` in the public layout, usable by PyTorch code."""
    torch = _torch()
    state_dict = state_dict_from_variables(model, variables, encoder_only=encoder_only)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in state_dict.items()}, "epoch": 0}, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stmem-convert", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="PyTorch .pth file -> model directory (orbax) for our trainers")
    imp.add_argument("checkpoint", help="public ST-MEM .pth file")
    imp.add_argument("output", help="directory to write")
    imp.add_argument("--allow-unused", action="store_true", help="list unknown tensors instead of failing")
    exp = sub.add_parser("export", help="model directory -> PyTorch .pth file in the public layout")
    exp.add_argument("model_dir", help="directory written by 'stmem-convert import' or a trainer")
    exp.add_argument("output", help=".pth file to write")
    exp.add_argument("--encoder-only", action="store_true", help="write the encoder file only")
    for command in (imp, exp):
        command.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)

    if args.command == "import":
        model, variables = load_torch_checkpoint(args.checkpoint, strict=not args.allow_unused)
        save_model(args.output, model, variables, overwrite=args.overwrite,
                   metadata={"source": os.path.abspath(args.checkpoint)})
    else:
        if os.path.exists(args.output) and not args.overwrite:
            parser.error(f"{args.output} exists; pass --overwrite to replace it")
        model, variables = load_model(args.model_dir)
        save_torch_checkpoint(args.output, model, variables, encoder_only=args.encoder_only)
    print(f"{args.command}ed {type(model).__name__} (preset {preset_name(model) or 'custom'}, "
          f"{count_parameters(model, variables) / 1e6:.2f} M parameters) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
