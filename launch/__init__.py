"""Entry points above both apps: bitfed-sim, bitfed-train, bitfed-memory and bitfed-data.

A launcher may use the training core, the Flower glue and both apps (the simulation loads them by
their component strings, as ``flwr run`` does); nothing below imports a launcher.
"""
