"""Loaders of the directory kinds beyond plain torch, registered with `directory.register` when first needed."""
