"""Flower ServerApp side of bitfed: strategies, checkpoints, simulation and deployment."""
