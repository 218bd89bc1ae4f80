"""Backend implementations of the op kernels; see ``grmseg.ops._backends`` for the contract."""
