"""Triton kernels, installed as xlmr_compress.kernels."""
