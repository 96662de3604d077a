"""Flower ClientApp side of bitfed: decode, call core, encode."""
