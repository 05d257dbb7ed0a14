"""Dataset preparation: native ECG datasets -> TFRecord shards (stmem-prepare)."""
