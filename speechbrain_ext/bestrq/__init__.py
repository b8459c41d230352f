"""BEST-RQ self-supervised pretraining (Chiu et al. 2022, https://arxiv.org/abs/2202.01855).

``quantizer`` (the frozen random-projection quantizer), ``masking`` (span masks and noise) and
``model`` (``BestRQ``: masked prediction of the quantized targets around a ``SpeechEncoder``).
"""
