"""What pretraining produces and everyone reuses: the mixer Conformer and the whole speech encoder.

``MixerConformerEncoder`` (SpeechBrain's ``ConformerEncoder`` interface, any mixer) and ``SpeechEncoder``
(fbank, normalisation, CNN front-end and that encoder; ``save_pretrained`` / ``from_pretrained``).
The old paths ``speechbrain_ext.encoder`` and ``speechbrain_ext.bestrq.model`` re-export them.
"""

from speechbrain_ext.models.encoder import MixerConformerEncoder, MixerConformerLayer
from speechbrain_ext.models.normalization import GlobalNormalization
from speechbrain_ext.models.speech_encoder import EncoderOutput, SpeechEncoder

__all__ = ["EncoderOutput", "GlobalNormalization", "MixerConformerEncoder", "MixerConformerLayer", "SpeechEncoder"]
