"""Shared test helpers: small mixer configurations and a recorder of the largest tensor."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from speechbrain_ext.mixers import MIXERS, build_mixer

# Small but complete configurations of every registered mixer (width 32, 4 heads).
SMALL_MIXER_KWARGS = {
    "mhsa": {},
    "hypermixing": {"hypernet_size": 64},
    "fastformer": {},
    "summarymixing": {"local_out": 24, "summary_out": 24},
    "mamba": {"d_state": 8},
}
LINEAR_MIXERS = [name for name in MIXERS if name != "mhsa"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_mixer(name: str, d_model: int = 32, nhead: int = 4):
    """An eval-mode mixer of the registry with a small configuration."""
    return build_mixer(name, d_model, nhead, **SMALL_MIXER_KWARGS[name]).eval()


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel = 0
        self.op = None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.numel() > self.numel:
                self.numel, self.op = tensor.numel(), str(func)
        return out
