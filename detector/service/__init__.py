"""The long-running parts: the run loop, signals, checkpoints."""
