"""Pre-training configs, one per method: ``<method>:<preset>``."""
