"""Training stage: settings, pair sampling and data, checkpoints and the training loop."""
