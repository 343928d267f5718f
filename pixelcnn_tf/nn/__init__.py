"""The primitives the model types are built from, each with its one-position step beside
it: masks.py (``get_mask``), layers.py (``MaskedConv2D`` and ``ConvStep``, colour groups,
gates), shifted.py (PixelCNN++'s shifted convolutions), attention.py (causal
self-attention)."""
