"""Sources, sinks and every wire or file format."""
