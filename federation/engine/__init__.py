"""The vectorized training engine: client state, cohorts, closed-form local SGD, numba kernels, the
one-client reference. Pure math and tensors: no I/O, no transport."""
