"""Import and export of public PyTorch checkpoints (the public ST-MEM code's ST-MEM, MTAE and MLAE).

Two file kinds are understood (layouts in the project's spec): the full pre-training model
(keys ``encoder.*``, ``to_decoder_embedding.*``, ``decoder_blocks.*``, ...) and the encoder
alone (``to_patch_embedding.*``, ``block0.*``, ..., ``norm.*``, plus ``head.*`` for a classifier).
Each model class with a public layout lists its tensors (``torch_layout``, from
``stmem_jax.torch_layout``) and reads its files (``from_torch``); this module knows no family.

A file's family is recognised by a tensor only its files hold (``TORCH_MARKER``: ST-MEM's
``sep_embedding``, MTAE/MLAE's ``cls_embedding``). Within a family (MTAE or MLAE: the same
keys) the model is resolved, first rule that applies: the ``kind`` argument (``stmem-convert
import --kind``); the file's ``config['model_name']`` (``mtae_vit_base_dec256d4b`` -> MTAE);
the shapes (``BaselineMAE.from_torch``). Exported files carry ``config['model_name']`` and
``config['model']`` (the input sizes), so they import back as the same model.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import re
import sys
import zipfile
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from stmem_jax import models
from stmem_jax.core import fileio
from stmem_jax.layers import HEAD_DIM
from stmem_jax.models import PRESETS, init_variables
from stmem_jax.torch_layout import Entry, linear, require


def layout(model: nn.Module, encoder_only: bool = False) -> list[Entry]:
    """Every tensor of the PyTorch file for ``model`` (its ``torch_layout``); ``encoder_only``: the
    encoder file (no decoder, no head, keys without the ``encoder.`` prefix)."""
    if not hasattr(model, "torch_layout"):
        raise ValueError(f"{type(model).__name__} has no public PyTorch layout")
    return model.torch_layout(encoder_only)


def _readers() -> list[type[nn.Module]]:
    """The pre-training model classes that read public files (a ``TORCH_MARKER`` tensor names their family)."""
    classes = dict.fromkeys(cls for cls, _ in models.kinds().values() if hasattr(cls, "from_torch"))
    return [cls for cls in classes if hasattr(cls, "noise_shape")]


def torch_kinds() -> list[str]:
    """The pre-training kinds whose public files this package reads (``stmem-convert import --kind``)."""
    return sorted({k for cls in _readers() for k in cls.TORCH_KINDS})


def _count(state_dict: dict[str, np.ndarray], pattern: str) -> int:
    return len({m.group(1) for k in state_dict if (m := re.fullmatch(pattern, k))})


def _heads(state_dict: dict[str, np.ndarray], key: str) -> int:
    rows = require(state_dict, key).shape[0]
    if rows % (3 * HEAD_DIM):
        raise ValueError(f"{key} has {rows} rows, not a multiple of 3 x {HEAD_DIM} (heads are {HEAD_DIM} wide)")
    return rows // (3 * HEAD_DIM)


def _reader(state_dict: dict[str, np.ndarray], prefix: str, kind: str | None, config: dict[str, Any]
            ) -> tuple[type[nn.Module], str | None]:
    """The model class whose family the file holds (by its marker tensor) and the pre-training kind
    that the hint or the config's model name says (None: the class decides by shapes)."""
    readers = _readers()
    if kind is not None and kind not in torch_kinds():
        raise ValueError(f"unknown model kind {kind!r}; choose from {torch_kinds()}")
    found = [cls for cls in readers if f"{prefix}{cls.TORCH_MARKER}" in state_dict]
    if not found:
        markers = ", ".join(f"{prefix}{cls.TORCH_MARKER} ({cls.TORCH_LABEL})" for cls in readers)
        raise KeyError(f"none of {markers} is in the file")
    cls = found[0]
    if kind is not None and kind not in cls.TORCH_KINDS:
        hinted = next(c for c in readers if kind in c.TORCH_KINDS)
        raise ValueError(f"the file holds {prefix}{cls.TORCH_MARKER}, not the tensors of a {hinted.TORCH_LABEL} "
                         f"model ({kind!r})")
    name = str(config.get("model_name", ""))
    return cls, kind or next((k for k in cls.TORCH_KINDS if name.startswith(k)), None)


def infer_model(state_dict: dict[str, np.ndarray], kind: str | None = None,
                config: dict[str, Any] | None = None) -> nn.Module:
    """Builds the Flax model that matches the shapes of a PyTorch state dict; ``kind`` (e.g. 'mtae'
    or 'mlae') and the file's ``config`` decide between models of one family (see the module docstring)."""
    config = config if isinstance(config, dict) else {}
    pretraining = "to_decoder_embedding.weight" in state_dict
    prefix = "encoder." if pretraining else ""
    cls, kind = _reader(state_dict, prefix, kind, config)
    width, features = require(state_dict, f"{prefix}to_patch_embedding.2.weight").shape
    fields = dict(
        width=width, token_features=features,
        depth=_count(state_dict, rf"{re.escape(prefix)}block(\d+)\.attn\.norm\.weight"),
        heads=_heads(state_dict, f"{prefix}block0.attn.fn.to_qkv.weight"),
        mlp_dim=require(state_dict, f"{prefix}block0.ff.fn.net.0.weight").shape[0],
    )
    if pretraining:
        decoder_width = state_dict["to_decoder_embedding.weight"].shape[0]
        decoder_mlp = require(state_dict, "decoder_blocks.0.ff.fn.net.0.weight").shape[0]
        if decoder_mlp != 4 * decoder_width:
            raise ValueError(f"decoder_blocks.0.ff.fn.net.0.weight: MLP width {decoder_mlp} is not 4 x {decoder_width}")
        fields |= dict(decoder_width=decoder_width,
                       decoder_depth=_count(state_dict, r"decoder_blocks\.(\d+)\.attn\.norm\.weight"),
                       decoder_heads=_heads(state_dict, "decoder_blocks.0.attn.fn.to_qkv.weight"))
    else:
        fields["num_classes"] = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 0
    return cls.from_torch(state_dict, prefix, kind, fields, config, pretraining)


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
    fixed = {k: np.asarray(v) for k, v in model.fixed_tables().items()} if hasattr(model, "fixed_tables") else {}
    params: dict[tuple[str, ...], np.ndarray] = {}
    sources: dict[tuple[str, ...], str] = {}
    entries = []
    for entry in layout(model):
        if entry.kind != "identity":
            entries.append(entry)
        elif f"{entry.key}.weight" in state_dict:  # a file that holds the projection anyway
            entries += linear(entry.key, entry.path)
        else:  # the public model has none here: an identity
            width = expected[(*entry.path, "kernel")].shape[0]
            params[(*entry.path, "kernel")] = np.eye(width, dtype=np.float32)
            params[(*entry.path, "bias")] = np.zeros(width, np.float32)
    for entry in entries:
        tensor = require(state_dict, entry.key).astype(np.float32)
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
        raise ValueError(f"{len(unused)} tensor(s) not part of the {model.TORCH_LABEL} layout: "
                         f"{', '.join(unused[:10])}")
    if unused:
        print(f"ignored {len(unused)} tensor(s): {', '.join(unused)}", file=sys.stderr)
    return model, {"params": jax.tree.map(jax.numpy.asarray, unflatten_dict(params))}


def state_dict_from_variables(model: nn.Module, variables: dict[str, Any], *, encoder_only: bool = False
                              ) -> dict[str, np.ndarray]:
    """PyTorch-layout state dict (NumPy arrays) of a model with a :func:`layout`; ``encoder_only``
    gives the encoder file (no decoder, no head, keys without the ``encoder.`` prefix)."""
    params = flatten_dict(jax.tree.map(np.asarray, variables["params"]))
    fixed = model.fixed_tables() if hasattr(model, "fixed_tables") else {}
    state_dict = {}
    for entry in layout(model, encoder_only):
        if entry.kind == "identity":
            kernel, bias = params[(*entry.path, "kernel")], params[(*entry.path, "bias")]
            if not (np.allclose(kernel, np.eye(len(kernel)), atol=1e-6) and np.allclose(bias, 0, atol=1e-6)):
                hint = " (the encoder alone can be exported: --encoder-only)" if entry.path[0] == "decoder" else ""
                raise ValueError(f"{'/'.join(entry.path)}: the public code builds no output projection for one "
                                 f"attention head as wide as its block ({len(kernel)}), and this model's is trained: "
                                 f"no file the public code loads can hold it{hint}")
            continue
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


# Limits on what a .pth file may make this process allocate, checked from the archive's entries before any
# tensor is read: the entries' uncompressed sizes together at most MAX_PTH_BYTES (the public ViT-B/75
# pre-training file, with its optimizer's state, holds 1.1 GB), and at most PTH_PER_MODEL times the float32
# size of the model its tensors describe (a float64 file with an optimizer's two moments) plus PTH_SLACK.
MAX_PTH_BYTES = 4 << 30
PTH_PER_MODEL = 6
PTH_SLACK = 16 << 20
MAX_PICKLE_BYTES = 64 << 20  # the archive's data.pkl (object structure, no tensor data)
_ITEMSIZE = {"DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8,
             "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1,
             "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "UntypedStorage": 1}


class _Stub:
    """Whatever a pickle builds that is neither a tensor nor a plain container: its arguments are
    kept, no code runs and nothing is imported."""

    def __new__(cls, *args, **kwargs):
        stub = object.__new__(cls)
        stub.args = args
        return stub

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str
    itemsize: int
    numel: int


@dataclasses.dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _tensor(storage: Any, offset: Any, shape: Any, stride: Any, *rest: Any) -> _Tensor:
    numbers = (offset, *shape, *stride) if isinstance(shape, tuple) and isinstance(stride, tuple) else (None,)
    if not isinstance(storage, _Storage) or len(shape) != len(stride) or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        raise pickle.UnpicklingError("a tensor whose storage, offset, shape or strides are not ones")
    return _Tensor(storage, offset, shape, stride)


class _ArchiveScanner(pickle.Unpickler):
    """Unpickles a ``torch.save`` archive's ``data.pkl`` with tensors as :class:`_Tensor` records."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
            return _tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, *rest: data
        return type(f"{module}.{name}", (_Stub,), {"itemsize": _ITEMSIZE.get(name) if module == "torch" else None})

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        _, kind, key, _, numel = pid
        if getattr(kind, "itemsize", None) is None or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"storage {key!r} of unknown type {getattr(kind, '__name__', kind)!r}")
        return _Storage(str(key), kind.itemsize, numel)


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for size, step in zip(reversed(shape), reversed(stride)):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def _scan(local: str, path: str) -> tuple[Any, int]:
    """The content of the ``torch.save`` archive at ``local`` (named ``path`` in errors) with each tensor a :class:`_Tensor` (read
    from the archive's directory and its pickle alone: no tensor is read), and the bytes its entries
    declare uncompressed (what reading it allocates). ValueError naming the file for an archive that
    is not one, declares sizes beyond ``MAX_PTH_BYTES`` or tensors its storages do not hold whole."""
    try:
        with zipfile.ZipFile(local) as archive:
            entries: dict[str, int] = {}
            for info in archive.infolist():
                entries[info.filename] = max(entries.get(info.filename, 0), info.file_size)
            declared = sum(info.file_size for info in archive.infolist())
            pickles = [name for name in entries if name.endswith("/data.pkl") and name.count("/") == 1]
            if len(pickles) != 1:
                raise ValueError("no data.pkl at the top of the archive")
            if entries[pickles[0]] > MAX_PICKLE_BYTES:
                raise ValueError(f"its data.pkl declares {entries[pickles[0]]:,} bytes (at most {MAX_PICKLE_BYTES:,})")
            if declared > MAX_PTH_BYTES:
                raise ValueError(f"its entries declare {declared:,} bytes uncompressed, more than a checkpoint this "
                                 f"package reads holds (at most {MAX_PTH_BYTES:,})")
            scanner = _ArchiveScanner(io.BytesIO(archive.read(pickles[0])))
            content = scanner.load()
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint (not a zip archive, the format torch.save "
                         f"writes)") from None
    except (ValueError, pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError) as error:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({str(error)[:160] or type(error).__name__})"
                         ) from None
    root = pickles[0].rsplit("/", 1)[0]
    state_dict = content.get("model", content) if isinstance(content, dict) else {}
    for key, tensor in (state_dict.items() if isinstance(state_dict, dict) else ()):
        if not isinstance(tensor, _Tensor):
            continue
        entry = entries.get(f"{root}/data/{tensor.storage.key}")
        numel = math.prod(tensor.shape)
        stored = tensor.storage.numel * tensor.storage.itemsize
        if entry is None or entry < stored or not _contiguous(tensor.shape, tensor.stride) or \
                tensor.offset + numel > tensor.storage.numel:
            raise ValueError(f"{path}: tensor {key!r} of shape {tensor.shape} is not stored whole in the file "
                             f"(strides {tensor.stride}, {entry or 0} bytes stored): not a saved model")
    return content, declared


def _state_dict(path: str | os.PathLike, content: Any, tensor_type: type) -> tuple[dict[str, Any], Any]:
    """The state dict of a checkpoint's content (the dict, or its ``'model'`` entry) and its config."""
    state_dict = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state_dict, dict) or not all(isinstance(v, tensor_type) for v in state_dict.values()):
        raise ValueError(f"{path}: expected a state dict or a dict with a 'model' state dict")
    return state_dict, content.get("config") if "model" in content else None


def _float32_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and fixed tables in float32."""
    shapes = jax.tree.leaves(jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))
    tables = model.fixed_tables().values() if hasattr(model, "fixed_tables") else ()
    return 4 * sum(int(np.prod(x.shape)) for x in [*shapes, *tables])


def load_torch_checkpoint(path: str | os.PathLike, *, strict: bool = True, kind: str | None = None
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """Reads a public ST-MEM / MTAE / MLAE ``.pth`` file (full pre-training model or encoder only)
    and returns the Flax model built with the preset inferred from the file, and its variables;
    ``kind`` ('mtae' or 'mlae') overrides the file's own hints (see the module docstring). Before
    any tensor is read, the archive's entries and pickle are checked (``MAX_PTH_BYTES``,
    ``PTH_PER_MODEL``): a file that would make it allocate more than its model can need is refused."""
    path = os.fspath(path)
    if not fileio.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    with fileio.local_copy(path) as (local,):
        return _load_local(local, path, strict, kind)


def _load_local(local: str, path: str, strict: bool, kind: str | None) -> tuple[nn.Module, dict[str, Any]]:
    """:func:`load_torch_checkpoint` of the local file ``local`` (errors name ``path``, the user's)."""
    content, declared = _scan(local, path)
    state_dict, config = _state_dict(path, content, _Tensor)
    try:  # the model its shapes describe (nothing read yet), and what it can need
        model = infer_model({k: np.broadcast_to(np.float32(0), v.shape) for k, v in state_dict.items()}, kind,
                            config)
    except (KeyError, ValueError) as error:
        raise type(error)(f"{path}: {error.args[0]}") from None
    limit = min(MAX_PTH_BYTES, PTH_PER_MODEL * _float32_bytes(model) + PTH_SLACK)
    if declared > limit:
        raise ValueError(f"{path}: its entries declare {declared:,} bytes uncompressed, more than the "
                         f"{type(model).__name__} its tensors describe can need ({limit:,}: {PTH_PER_MODEL} x its "
                         f"float32 size + {PTH_SLACK >> 20} MiB): not a saved model")
    torch = _torch()
    try:
        content = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds, with messages of many lines
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({reason})") from error
    state_dict, config = _state_dict(path, content, torch.Tensor)
    arrays = {k: v.detach().to(torch.float32).numpy() for k, v in state_dict.items()}
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
    config = {"model_name": model.torch_name(),
              "model": {k: getattr(model, k) for k in ("seq_len", "patch_size", "num_leads")}}
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    with fileio.open(os.fspath(path), "wb") as f:
        torch.save({"model": tensors, "epoch": 0, "config": config}, f)

