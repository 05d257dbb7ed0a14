"""tf.data datasets of a shard's serialised examples, wherever the shard lies: TensorFlow's
TFRecord reader for local files; for a URL, the I/O layer's byte stream with the TFRecord framing
parsed on the host (``core.shards.read_records``), since TensorFlow's own ``gs://`` file system
cannot be pointed at another endpoint (``core.fileio``)."""

from __future__ import annotations

import tensorflow as tf

from stmem_jax.core import fileio
from stmem_jax.core import shards as fmt

_BUFFER = 1 << 20


def _generate(path: bytes, expected: int):
    yield from fmt.read_records(path.decode(), None if expected < 0 else int(expected))


def record_dataset(path: str | tf.Tensor, expected: int | tf.Tensor = -1, *, remote: bool | None = None
                   ) -> tf.data.Dataset:
    """The serialised examples of the shard at ``path`` (a string or a string tensor), in order;
    ``expected`` (>= 0) is the count the manifest gives, checked as a URL's shard is read (a local
    shard's count is checked before, from its headers). ``remote`` says whether ``path`` is a URL
    (needed when it is a tensor)."""
    remote = fileio.is_url(path) if remote is None else remote
    if not remote:
        return tf.data.TFRecordDataset(path, buffer_size=_BUFFER)
    return tf.data.Dataset.from_generator(_generate, args=(path, tf.cast(expected, tf.int64)),
                                          output_signature=tf.TensorSpec((), tf.string))
