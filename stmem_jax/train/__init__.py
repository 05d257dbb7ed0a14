"""Training: optimisation, device mesh, checkpoints, reporting, and the trainers."""
