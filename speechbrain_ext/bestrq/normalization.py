"""Old import path of :mod:`speechbrain_ext.models.normalization`."""

from speechbrain_ext.models.normalization import *  # noqa: F401,F403
from speechbrain_ext.models.normalization import GlobalNormalization  # noqa: F401
