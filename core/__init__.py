"""bitfed's training core: binary neural networks trained with 1-bit saved state (no Flower here).

Method: Wang et al., "Enabling Binary Neural Network Training on the Edge", arXiv 2102.04270.
"""
