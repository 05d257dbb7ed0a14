"""Downstream configs, one per dataset (``<dataset>:<task>``), and the evaluation grid."""
