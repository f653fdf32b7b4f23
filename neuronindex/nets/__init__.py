"""Networks in: loading a model, tracing its layers and their receptive fields, tapping the layers
and reducing each batch of maps (summaries, the compiled kernels). Imports only the base modules."""
