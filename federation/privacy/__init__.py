"""Privacy of what leaves a client: user-level differential privacy of the decoder (``dp``)."""
