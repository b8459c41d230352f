"""What pretraining produces and everyone reuses.

``encoder`` (``MixerConformerEncoder``: SpeechBrain's ``ConformerEncoder`` interface, any mixer),
``speech_encoder`` (``SpeechEncoder``: fbank, normalisation, CNN front-end and that encoder;
``save_pretrained`` / ``from_pretrained``), ``normalization``, ``front_end`` and ``dropout``.
"""
