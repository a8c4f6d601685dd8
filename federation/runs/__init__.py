"""Jobs: validated configuration, run directories (manifest, checkpoints, metrics) and the run loop."""
