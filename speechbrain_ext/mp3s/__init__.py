"""MP3S downstream evaluation of frozen pretrained encoders (Zaiem et al. 2023).

Heads, training loops and task pipelines; the recipes under ``recipes/MP3S`` are thin entry points.
"""
