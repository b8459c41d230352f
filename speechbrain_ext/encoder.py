"""Old import path of :mod:`speechbrain_ext.models.encoder`, kept for YAMLs and users
(``!new:speechbrain_ext.encoder.MixerConformerEncoder``)."""

from speechbrain_ext.models.encoder import (  # noqa: F401
    POSITION_BUILDERS,
    MixerConformerEncoder,
    MixerConformerLayer,
    check_encoder_options,
    masked_convolution,
    positional_embeddings,
)
