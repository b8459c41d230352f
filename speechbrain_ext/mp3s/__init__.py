"""MP3S downstream evaluation of frozen pretrained encoders (Zaiem et al. 2023, https://arxiv.org/abs/2306.00452).

``frozen_encoder`` (the frozen encoder and the learned weighted sum of its layers), ``heads`` (the downstream
heads), ``text`` (ASR output units, CTC decoding, error rates), ``brain`` (the Brain and run records the recipes
share) and ``suite`` (every recipe of ``recipes/MP3S`` for one or more encoders, and the results tables).
"""
