"""The shared core of stmem_jax and data_prep: lead names, the signal recipe, the shard format and
the WFDB reader. It imports neither package's other modules and loads neither JAX nor TensorFlow,
so preparation workers stay light."""
