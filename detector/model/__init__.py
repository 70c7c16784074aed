"""The LSTM: Numba kernels, parameters, optimiser, training."""
