"""detector: streaming anomaly detection with per-stream LSTM state."""

__version__ = "0.1.0"
