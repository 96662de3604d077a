"""Flower glue that both apps stand on: records <-> numpy arrays, and the Flower environment.

No ML here (that is :mod:`core`) and no app (those are :mod:`client` and :mod:`server`, which
never import each other).
"""
