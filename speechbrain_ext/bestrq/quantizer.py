"""Random-projection quantizer that makes the BEST-RQ targets
(Chiu et al. 2022, https://arxiv.org/abs/2202.01855).

A frozen Xavier-initialised projection maps each stacked fbank frame to a small space, the
result is L2-normalised, and the target is the index of the nearest of ``cb_vocab``
L2-normalised random codes. Same semantics as SpeechBrain's
``speechbrain.nnet.quantisers.RandomProjectionQuantizer``, plus several codebooks, a seed,
and a nearest-code search that is a (N, cb_dim) x (cb_dim, V) matmul and an argmax instead of
SpeechBrain's (B, V, T, cb_dim) difference tensor.

``norm="time"`` reproduces the BEST-RQ paper's code (whettenr/brq-att-alt-exp ``quantiser.py``:
``F.normalize(x @ self.P)``, whose default ``dim=1`` is the time axis of (B, T, cb_dim)), which
SpeechBrain later fixed to per frame: each projected frame is divided by the norm of its channel
over the whole padded sequence, so an utterance's targets depend on the batch's padding. The
default ``norm="frame"`` normalises each frame on its own.
"""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("frame", "time")
PRECISIONS = ("autocast", "float32")


class RandomProjectionQuantizer(nn.Module):
    """Frozen random-projection quantizer (BEST-RQ, Section 3.1).

    For each codebook k: ``target_k = argmax_v <normalize(x @ P_k), CB_k[v]>``. Both sides are
    unit vectors, so this is the code at the smallest L2 distance, as in SpeechBrain. The search
    runs in float32 with autocast disabled (bf16 rounding would change which of 8192 codes in
    16 dimensions is nearest) and scores at most ``chunk_size`` frames at a time, so its extra
    memory is ``chunk_size * cb_vocab`` floats whatever the batch size and length.

    Buffers (frozen, saved in ``state_dict``, never parameters):

    * ``projections``: (K, input_dim, cb_dim), Xavier-uniform.
    * ``codebooks``: (K, cb_vocab, cb_dim), random normal rows of unit L2 norm.

    Loading SpeechBrain's quantizer: :meth:`from_speechbrain` builds one from a module, and
    ``load_state_dict`` of a single-codebook quantizer also accepts SpeechBrain's keys
    ``P`` (input_dim, cb_dim) and ``CB`` (cb_vocab, cb_dim), so checkpoints of SpeechBrain's
    BEST-RQ recipe restore the same targets.

    Arguments
    ---------
    input_dim : int
        Size of the last dimension of the input, D (320 for 4 stacked 80-dim fbank frames).
    cb_dim : int
        Size of the projected space and of every code.
    cb_vocab : int
        Number of codes per codebook, V.
    num_codebooks : int
        Number of independent (projection, codebook) pairs, K.
    seed : int, optional
        Seed of a local ``torch.Generator`` that draws the buffers; the global RNG is untouched.
        If None, a seed is drawn from the global RNG, so ``torch.manual_seed`` still makes the
        buffers reproducible.
    chunk_size : int
        Largest number of frames scored against a codebook at once.
    norm : str
        ``"frame"``: each projected frame to unit L2 norm; ``"time"``: each channel of the
        projection to unit L2 norm over the (padded) time axis, as the paper's code does. The
        codes are unit vectors, so the argmax of dot products is the nearest code either way.
    precision : str
        ``"autocast"``: the projection in the caller's autocast dtype, as the paper's code computes
        ``x @ P`` inside the run's fp16/bf16 autocast (its normalisation and distances then run in
        float32); ``"float32"``: the projection in float32 whatever the caller's autocast. The
        normalisation and the nearest-code search are float32 either way, and the targets are the
        same outside autocast.

    Example
    -------
    >>> quantizer = RandomProjectionQuantizer(320, cb_dim=16, cb_vocab=8192, seed=0)
    >>> targets = quantizer(torch.randn(2, 50, 320))
    >>> targets.shape, targets.dtype
    (torch.Size([2, 50, 1]), torch.int64)
    """

    def __init__(
        self,
        input_dim: int,
        cb_dim: int = 16,
        cb_vocab: int = 8192,
        num_codebooks: int = 1,
        seed: int | None = None,
        chunk_size: int = 4096,
        norm: str = "frame",
        precision: str = "autocast",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"RandomProjectionQuantizer: unknown norm {norm!r}; valid: {', '.join(NORMS)}")
        if precision not in PRECISIONS:
            raise ValueError(
                f"RandomProjectionQuantizer: unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}"
            )
        self.norm = norm
        self.precision = precision
        sizes = {
            "input_dim": input_dim,
            "cb_dim": cb_dim,
            "cb_vocab": cb_vocab,
            "num_codebooks": num_codebooks,
            "chunk_size": chunk_size,
        }
        bad = {
            name: value
            for name, value in sizes.items()
            if int(value) != value or value < 1
        }
        if bad:
            raise ValueError(
                f"RandomProjectionQuantizer sizes must be positive integers, got {bad}"
            )
        self.input_dim = input_dim
        self.cb_dim = cb_dim
        self.cb_vocab = cb_vocab
        self.num_codebooks = num_codebooks
        self.chunk_size = chunk_size
        if seed is None:
            # Draw only the seed from the global RNG: a recipe's torch.manual_seed then
            # fixes the codebooks, and the global stream moves by one draw whatever the sizes.
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.seed = seed

        generator = torch.Generator().manual_seed(seed)
        projections = torch.empty(num_codebooks, input_dim, cb_dim)
        codebooks = torch.empty(num_codebooks, cb_vocab, cb_dim)
        for k in range(num_codebooks):
            # Section 3.1: "projection matrix A uses Xavier initialization".
            nn.init.xavier_uniform_(projections[k], generator=generator)
            codebooks[k] = F.normalize(
                torch.randn(cb_vocab, cb_dim, generator=generator), dim=-1
            )
        self.register_buffer("projections", projections)
        self.register_buffer("codebooks", codebooks)

    @classmethod
    def from_speechbrain(cls, sb_quantizer: nn.Module) -> "RandomProjectionQuantizer":
        """Builds a one-codebook quantizer holding a copy of SpeechBrain's buffers.

        Arguments
        ---------
        sb_quantizer : speechbrain.nnet.quantisers.RandomProjectionQuantizer
            Source module with buffers ``P`` (input_dim, cb_dim) and ``CB`` (cb_vocab, cb_dim).

        Returns
        -------
        RandomProjectionQuantizer
            A quantizer that gives the same indices, as (B, T, 1).

        Example
        -------
        >>> from speechbrain.nnet.quantisers import RandomProjectionQuantizer as SBQuantizer
        >>> quantizer = RandomProjectionQuantizer.from_speechbrain(SBQuantizer(80, 16, 64))
        >>> quantizer.projections.shape, quantizer.codebooks.shape
        (torch.Size([1, 80, 16]), torch.Size([1, 64, 16]))
        """
        input_dim, cb_dim = sb_quantizer.P.shape
        quantizer = cls(
            input_dim, cb_dim, sb_quantizer.CB.shape[0], num_codebooks=1, seed=0
        )
        quantizer.load_state_dict({"P": sb_quantizer.P, "CB": sb_quantizer.CB})
        return quantizer.to(sb_quantizer.P.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Map SpeechBrain's single-codebook keys onto ours, so its checkpoints load with
        # load_state_dict (and SpeechBrain's Checkpointer) without a conversion step.
        sb_keys = (prefix + "P", prefix + "CB")
        ours = (prefix + "projections", prefix + "codebooks")
        if (
            self.num_codebooks == 1
            and all(k in state_dict for k in sb_keys)
            and not any(k in state_dict for k in ours)
        ):
            for sb_key, key in zip(sb_keys, ours):
                state_dict[key] = state_dict.pop(sb_key).unsqueeze(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes the nearest-code index of every frame in every codebook.

        Arguments
        ---------
        x : torch.Tensor
            Frames, (B, T, D) with D = ``input_dim``.

        Returns
        -------
        torch.Tensor
            Targets, LongTensor (B, T, K), always with the codebook axis (also when K = 1)
            so callers index ``targets[..., k]`` whatever the configuration.
        """
        if x.dim() != 3:
            raise ValueError(
                f"RandomProjectionQuantizer expects (B, T, D) input, got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.input_dim:
            raise ValueError(
                f"RandomProjectionQuantizer expects input last dim input_dim={self.input_dim}, "
                f"got {x.shape[-1]}"
            )
        batch, time, _ = x.shape
        targets = torch.empty(
            batch * time, self.num_codebooks, dtype=torch.long, device=x.device
        )
        float32 = self.precision == "float32"
        if float32:
            x = x.float()
        for k in range(self.num_codebooks):
            # "autocast": the projection in whatever autocast the caller runs (the paper's code: the run's).
            with torch.autocast(device_type=x.device.type, enabled=False) if float32 else contextlib.nullcontext():
                projected = x @ self.projections[k].to(x.dtype)  # (B, T, cb_dim)
            with torch.autocast(device_type=x.device.type, enabled=False):
                projected = F.normalize(projected.float(), dim=-1 if self.norm == "frame" else 1)
                projected = projected.reshape(batch * time, self.cb_dim)
                codes_t = self.codebooks[k].float().t()
                for start in range(0, projected.shape[0], self.chunk_size):
                    scores = projected[start : start + self.chunk_size] @ codes_t
                    targets[start : start + self.chunk_size, k] = scores.argmax(dim=-1)
        return targets.view(batch, time, self.num_codebooks)

    def extra_repr(self) -> str:
        return (
            f"input_dim={self.input_dim}, cb_dim={self.cb_dim}, cb_vocab={self.cb_vocab}, "
            f"num_codebooks={self.num_codebooks}, seed={self.seed}, norm={self.norm}, precision={self.precision}"
        )
