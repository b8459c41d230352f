"""Conformer encoder whose self-attention is any sequence mixer of ``speechbrain_ext.mixers``.

The blocks are SpeechBrain's pre-norm Conformer blocks (Gulati et al. 2020,
https://arxiv.org/abs/2005.08100), built from SpeechBrain's feed-forward, convolution module
and layer norm, with the same parameter names as ``ConformerEncoderLayer``:
half FFN -> norm -> mixer -> convolution module -> half FFN -> norm.

The defaults are the BEST-RQ paper's code (whettenr/speechbrain-fork, branch alt-attention,
``lobes/models/transformer/Conformer.py``): no dropout on the mixer output (its
``ConformerEncoderLayer`` adds the attention output to the residual as is), a final LayerNorm with
eps 1e-6 and the Swish activation (its Conformer's ``conformer_activation``, whatever the YAML's
``activation``). As in SpeechBrain, positions added to the encoder input belong to the model around
it (``TransformerASR.encode``; ``SpeechEncoder``); ``input_positions="absolute"`` adds them here.

Streaming, as SpeechBrain's ``ConformerEncoder``: ``forward(..., dynchunktrain_config=)`` trains in dynamic
chunks (each mixer reads a frame's chunk and the allowed earlier chunks, the convolution module sees no frame
after the chunk: Dynamic Chunk Convolution), and ``forward_streaming(chunk, context)`` with a context from
``make_streaming_context(config)`` gives the same outputs chunk by chunk, each layer carrying its mixer's
state and the convolution's left frames.
"""

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.transformer.Conformer import ConvolutionModule
from speechbrain.lobes.models.transformer.Transformer import get_lookahead_mask
from speechbrain.lobes.models.transformer.TransformerASR import make_transformer_src_mask
from speechbrain.nnet.attention import PositionalwiseFeedForward
from speechbrain.nnet.normalization import LayerNorm
from torch import nn

from speechbrain_ext.mixers import build_mixer, causal_mixer_kwargs
from speechbrain_ext.mixers._common import (
    absolute_sinusoids,
    check_chunk_config,
    check_padding_mask,
    check_sizes,
    relative_sinusoids,
    resolve_activation,
)
from speechbrain_ext.mixers.depthwise import depthwise_conv_time_major

POSITION_BUILDERS = {"relative": relative_sinusoids, "absolute": absolute_sinusoids}


def positional_embeddings(kind: Optional[str], x: torch.Tensor) -> Optional[torch.Tensor]:
    """The positional signal a mixer declares (``pos_embs_kind``) for x (B, T, E), any T."""
    if kind is None:
        return None
    if kind not in POSITION_BUILDERS:
        raise ValueError(f"unknown pos_embs_kind {kind!r}; valid: {', '.join(POSITION_BUILDERS)} or None")
    return POSITION_BUILDERS[kind](x.shape[1], x.shape[2], x.device, x.dtype)


def masked_convolution(
    module: ConvolutionModule, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor],
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """SpeechBrain's Conformer convolution module with padding zeroed before the depthwise conv.

    ``ConvolutionModule.forward`` masks only its output, so the last valid frames would read
    the (non-zero) bottleneck output of padded frames through the kernel: an utterance would
    encode differently alone and beside a longer one. With ``chunk_size``, no output frame reads a
    frame after the end of its chunk (SpeechBrain's Dynamic Chunk Convolution, ``ConvolutionModule``
    with a ``dynchunktrain_config``).
    """
    pointwise, glu = module.bottleneck
    if chunk_size is not None and (module.causal or module.dilation != 1 or not isinstance(glu, nn.GLU)):
        raise ValueError("chunked convolution needs a non-causal ConvolutionModule with dilation 1 (as SpeechBrain's)")
    if module.dilation != 1 or not isinstance(glu, nn.GLU):  # SpeechBrain's own layout
        out = module.bottleneck(module.layer_norm(x).transpose(1, 2))  # (B, E, T)
        if key_padding_mask is not None:
            out = out.masked_fill(key_padding_mask.unsqueeze(1), 0.0)
        out = module.conv(out)
        if module.causal:
            out = out[..., : -module.padding]
        out = out.transpose(1, 2)
    else:
        # The same layers on (B, T, E) frames, without transposed copies: the pointwise
        # convolution is a linear layer and the depthwise one runs time-major.
        out = F.glu(F.linear(module.layer_norm(x), pointwise.weight.squeeze(-1), pointwise.bias), dim=-1)
        if key_padding_mask is not None:
            out = out.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
        # SpeechBrain pads `padding` frames on both sides (then cuts the causal output's end): the
        # output at t reads from t - padding on.
        if chunk_size is None:
            out = depthwise_conv_time_major(out, module.conv, left=module.padding)
        else:
            out = chunked_depthwise_conv(out, module.conv, module.padding, chunk_size)
    out = module.after_conv(out)
    if key_padding_mask is not None:
        out = out.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
    return out


def chunked_depthwise_conv(x: torch.Tensor, conv: nn.Conv1d, padding: int, chunk_size: int) -> torch.Tensor:
    """A depthwise convolution of x (B, T, D) whose output at t reads frames t - padding .. t + padding, with
    zeros for frames after the end of t's chunk (and before frame 0): (B, T, D).

    The chunks, each with its ``padding`` earlier frames, go through ``F.conv1d`` as a batch, as in
    SpeechBrain's ``ConvolutionModule`` with a ``dynchunktrain_config``.
    """
    batch, length, _ = x.shape
    out = F.pad(x.transpose(1, 2), (padding, -length % chunk_size))  # (B, D, padding + T')
    windows = F.pad(out.unfold(2, chunk_size + padding, chunk_size), (0, padding))  # (B, D, n, K + 2 padding)
    out = F.conv1d(windows.transpose(1, 2).flatten(0, 1), conv.weight, conv.bias, groups=conv.groups)
    return out.unflatten(0, (batch, -1)).transpose(2, 3).flatten(1, 2)[:, :length]


def check_encoder_options(
    num_layers: int, d_model: int, d_ffn: int, nhead: int, kernel_size: int, dropout: float, layerdrop_prob: float
) -> None:
    """One clear ValueError for the first bad size or rate of a Conformer encoder, before anything is built."""
    check_sizes("MixerConformerEncoder", num_layers=num_layers, d_model=d_model, d_ffn=d_ffn, nhead=nhead,
                kernel_size=kernel_size)
    if kernel_size % 2 == 0:
        raise ValueError(f"MixerConformerEncoder: kernel_size must be odd (the convolution keeps the length "
                         f"with 'same' padding), got {kernel_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"MixerConformerEncoder: dropout must be in [0, 1), got {dropout}")
    if not 0.0 <= layerdrop_prob < 1.0:
        raise ValueError(f"MixerConformerEncoder: layerdrop_prob must be in [0, 1), got {layerdrop_prob}")


def layerdrop_decisions(num_layers: int, prob: float) -> list[bool]:
    """Which of ``num_layers`` blocks LayerDrop skips in this step, on this process.

    Every process draws a (num_layers, world_size) table from torch's global generator and reads
    its own column: the ranks skip different blocks (the paper's code draws on each GPU from its own
    generator), while every rank's global random stream stays the same, so the draws are reproducible
    from the seed and the rank and resume exactly with the generator states a checkpoint holds.
    """
    rank, world_size = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return (torch.rand(num_layers, world_size)[:, rank] < prob).tolist()


class MixerConformerLayer(nn.Module):
    """One Conformer block with ``mixer`` in place of self-attention.

    Arguments
    ---------
    d_model : int
        Width E.
    d_ffn : int
        Hidden width of the two feed-forward modules.
    mixer : nn.Module
        Any module with the mixer interface (see ``speechbrain_ext.mixers``).
    kernel_size : int
        Kernel of the depthwise convolution.
    dropout : float
        Dropout in the feed-forward and convolution modules (and on the mixer output).
    activation : str or type
        Activation of the feed-forward and convolution modules (a name of ``ACTIVATIONS`` or a class;
        the paper's code: Swish).
    mixer_output_dropout : bool
        Dropout on the mixer output before the residual sum (the paper's code has none).
    causal : bool
        Causal depthwise convolution (SpeechBrain's ``ConvolutionModule(causal=True)``); the mixer
        must be causal too (the encoder builds it so).

    Example
    -------
    >>> from speechbrain_ext.mixers.fastformer import Fastformer
    >>> layer = MixerConformerLayer(64, 128, Fastformer(64, 4), kernel_size=3)
    >>> layer(torch.rand(2, 10, 64)).shape
    torch.Size([2, 10, 64])
    """

    def __init__(
        self,
        d_model: int,
        d_ffn: int,
        mixer: nn.Module,
        kernel_size: int = 31,
        dropout: float = 0.1,
        activation: Union[str, type] = "swish",
        mixer_output_dropout: bool = False,
        causal: bool = False,
    ) -> None:
        super().__init__()
        activation = resolve_activation(activation)
        self.ffn_module1 = self._half_ffn(d_model, d_ffn, dropout, activation)
        self.norm1 = LayerNorm(d_model)
        self.mha_layer = mixer
        self.drop = nn.Dropout(dropout) if mixer_output_dropout else nn.Identity()
        self.convolution_module = ConvolutionModule(d_model, kernel_size, True, activation, dropout, causal=causal)
        self.ffn_module2 = self._half_ffn(d_model, d_ffn, dropout, activation)
        self.norm2 = LayerNorm(d_model)

    @staticmethod
    def _half_ffn(d_model: int, d_ffn: int, dropout: float, activation: type) -> nn.Sequential:
        return nn.Sequential(
            nn.LayerNorm(d_model),
            PositionalwiseFeedForward(d_ffn=d_ffn, input_size=d_model, dropout=dropout, activation=activation),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
        dynchunktrain_config=None,
    ) -> torch.Tensor:
        """(B, T, E) -> (B, T, E); ``key_padding_mask`` (B, T) is True at padded frames;
        ``attn_mask`` (T, T) is passed to the mixer (which honours it or raises);
        ``dynchunktrain_config`` (SpeechBrain's ``DynChunkTrainConfig``) runs the mixer and the convolution
        in chunks.

        Padded frames are zeroed first: whatever they hold (inf, NaN, 1e30) then never reaches a valid frame
        (a zero attention weight times an infinite value is NaN).
        """
        if key_padding_mask is not None:
            x = x.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
        x = x + 0.5 * self.ffn_module1(x)
        normed = self.norm1(x)
        # Only a chunked call passes the keyword, so that any SpeechBrain attention layer can be the mixer.
        chunks = {} if dynchunktrain_config is None else {"dynchunktrain_config": dynchunktrain_config}
        mixed, _ = self.mha_layer(
            normed, normed, normed, attn_mask=attn_mask, key_padding_mask=key_padding_mask, pos_embs=pos_embs,
            **chunks,
        )
        x = x + self.drop(mixed)
        chunk_size = None if dynchunktrain_config is None else dynchunktrain_config.chunk_size
        x = x + masked_convolution(self.convolution_module, x, key_padding_mask, chunk_size)
        return self.norm2(x + 0.5 * self.ffn_module2(x))

    def make_streaming_context(self, dynchunktrain_config) -> "MixerConformerLayerStreamingContext":
        """A blank streaming context for this block: its mixer's, and the convolution's left frames."""
        return MixerConformerLayerStreamingContext(self.mha_layer.make_streaming_context(dynchunktrain_config))

    def forward_streaming(self, x: torch.Tensor, context: "MixerConformerLayerStreamingContext") -> torch.Tensor:
        """One chunk (B, K, E) -> (B, K, E), as :meth:`forward` in chunks computes it over the whole stream;
        ``context`` is updated for the next chunk."""
        x = x + 0.5 * self.ffn_module1(x)
        x = x + self.drop(self.mha_layer.forward_streaming(self.norm1(x), context.mixer))
        # The convolution reads `padding` earlier frames (whatever their chunk) and zeros after the chunk's end.
        window = x if context.dcconv_left_context is None else torch.cat([context.dcconv_left_context, x], dim=1)
        keep = self.convolution_module.padding
        context.dcconv_left_context = window[:, max(window.shape[1] - keep, 0):] if keep > 0 else None
        x = x + masked_convolution(self.convolution_module, window, None)[:, window.shape[1] - x.shape[1]:]
        return self.norm2(x + 0.5 * self.ffn_module2(x))


@dataclass
class MixerConformerLayerStreamingContext:
    """Streaming state of one :class:`MixerConformerLayer` (SpeechBrain's
    ``ConformerEncoderLayerStreamingContext``): its mixer's context (running sums, pooling states, scan state
    or attention left context) and the convolution module's left frames."""

    mixer: Any
    dcconv_left_context: Optional[torch.Tensor] = None


@dataclass
class MixerConformerEncoderStreamingContext:
    """Streaming state of a :class:`MixerConformerEncoder` (SpeechBrain's ``ConformerEncoderStreamingContext``):
    the chunk configuration, every layer's context, the frames streamed so far (the positions of the next
    chunk) and whether a short chunk has ended the stream."""

    dynchunktrain_config: Any
    layers: list = field(default_factory=list)
    frames: int = 0
    ended: bool = False


class MixerConformerEncoder(nn.Module):
    """Stack of Conformer blocks around a pluggable sequence mixer.

    Arguments
    ---------
    num_layers : int
        Number of blocks (12 for the paper's base model, 24 for large).
    d_model : int
        Width E.
    d_ffn : int
        Hidden width of the feed-forward modules.
    nhead : int
        Heads of the mixer (ignored by mixers without heads).
    mixer : str or type
        A name registered in ``speechbrain_ext.mixers.MIXERS`` or a mixer class.
    kernel_size : int
        Kernel of the depthwise convolutions.
    dropout : float
        Dropout inside the blocks.
    activation : str or type
        Activation of the feed-forward and convolution modules (a name of ``ACTIVATIONS`` or a class;
        the paper's code: Swish).
    layerdrop_prob : float
        Probability of skipping each block while training (LayerDrop, Fan et al. 2019). Under
        DDP each process draws its own blocks, as the paper's code does (see
        :func:`layerdrop_decisions`), and skipped blocks leave parameters unused: set
        ``find_unused_parameters``.
    output_hidden_states : bool
        Also return the block input and every block output (as SpeechBrain's ``ConformerEncoder``).
    mixer_kwargs : dict, optional
        Extra keyword arguments of the mixer (e.g. ``{"hypernet_size": 2048}``).
    mixer_output_dropout : bool
        Dropout on each mixer's output before the residual sum (the paper's code: none).
    input_positions : str, optional
        ``"absolute"`` adds a sinusoidal position encoding (any length) to the encoder input;
        None (default, as SpeechBrain's ``ConformerEncoder``) leaves that to the model around it.
    final_norm_eps : float
        Epsilon of the final layer norm (the paper's code and SpeechBrain's ``ConformerEncoder``: 1e-6).
    causal : bool
        Streaming encoder: causal mixers (``causal=True`` for those that have the option, a causal
        ``attn_mask`` for ``mhsa``) and causal convolutions, as SpeechBrain's ``causal=True``.
        A mixer with no causal form raises here. The other streaming form is dynamic chunks
        (``dynchunktrain_config``, on a non-causal encoder).

    Called like SpeechBrain's ``ConformerEncoder`` (so it can be ``TransformerASR.encoder``):
    ``forward(src, src_mask=None, src_key_padding_mask=None, pos_embs=None, dynchunktrain_config=None)``
    returns ``(out, attentions)``, or ``(out, attentions, hidden)`` with ``output_hidden_states``;
    ``attentions`` holds one None per block run (the mixers return no weights).

    Example
    -------
    >>> enc = MixerConformerEncoder(2, 64, 128, 4, mixer="summarymixing", output_hidden_states=True,
    ...     mixer_kwargs={"local_hidden": 32, "local_out": 32, "summary_hidden": 32})
    >>> out, attentions, hidden = enc(torch.rand(3, 20, 64))
    >>> out.shape, len(hidden)
    (torch.Size([3, 20, 64]), 3)
    >>> out, attentions = enc(torch.rand(3, 20, 64), output_hidden_states=False)

    In chunks, then streaming chunk by chunk with the same outputs:

    >>> from speechbrain.utils.dynamic_chunk_training import DynChunkTrainConfig
    >>> enc = enc.eval()
    >>> x, config = torch.rand(1, 20, 64), DynChunkTrainConfig(chunk_size=8, left_context_size=1)
    >>> chunked, _ = enc(x, dynchunktrain_config=config, output_hidden_states=False)
    >>> context = enc.make_streaming_context(config)
    >>> streamed = torch.cat([enc.forward_streaming(x[:, i:i + 8], context)[0] for i in (0, 8, 16)], dim=1)
    >>> torch.allclose(streamed, chunked, atol=1e-5)
    True
    """

    def __init__(
        self,
        num_layers: int,
        d_model: int,
        d_ffn: int,
        nhead: int,
        mixer: Union[str, type] = "mhsa",
        kernel_size: int = 31,
        dropout: float = 0.1,
        activation: Union[str, type] = "swish",
        layerdrop_prob: float = 0.0,
        output_hidden_states: bool = False,
        mixer_kwargs: Optional[dict] = None,
        mixer_output_dropout: bool = False,
        input_positions: Optional[str] = None,
        final_norm_eps: float = 1e-6,
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_encoder_options(num_layers, d_model, d_ffn, nhead, kernel_size, dropout, layerdrop_prob)
        if input_positions not in (None, "absolute"):
            raise ValueError(f"input_positions must be None or 'absolute', got {input_positions!r}")
        mixer_kwargs = dict(mixer_kwargs or {})
        if causal:
            try:
                mixer_kwargs.update(causal_mixer_kwargs(mixer))
            except ValueError as error:
                raise ValueError(f"MixerConformerEncoder(causal=True): {error}") from None
        self.layers = nn.ModuleList(
            MixerConformerLayer(
                d_model,
                d_ffn,
                build_mixer(mixer, d_model, nhead, **mixer_kwargs),
                kernel_size=kernel_size,
                dropout=dropout,
                activation=activation,
                mixer_output_dropout=mixer_output_dropout,
                causal=causal,
            )
            for _ in range(num_layers)
        )
        self.norm = LayerNorm(d_model, eps=final_norm_eps)
        self.input_positions = input_positions
        self.pos_embs_kind = getattr(self.layers[0].mha_layer, "pos_embs_kind", None)
        self.layerdrop_prob = layerdrop_prob
        self.output_hidden_states = output_hidden_states
        self.causal = causal

    def forward(
        self,
        src: torch.Tensor,
        src_mask: Optional[torch.Tensor] = None,
        src_key_padding_mask: Optional[torch.Tensor] = None,
        pos_embs: Optional[torch.Tensor] = None,
        dynchunktrain_config=None,
        output_hidden_states: Optional[bool] = None,
    ) -> tuple:
        """Encodes ``src`` (B, T, E), with SpeechBrain's ``ConformerEncoder.forward`` arguments.

        Arguments
        ---------
        src : torch.Tensor
            (B, T, E).
        src_mask : torch.Tensor, optional
            (T, T) attention mask, passed to every mixer: None or causal (``get_lookahead_mask``)
            for the causal mixers; any mask a mixer cannot honour raises. With ``causal=True``
            a causal mask is made when none is given.
        src_key_padding_mask : torch.Tensor, optional
            (B, T), True at padded frames.
        pos_embs : torch.Tensor, optional
            Positions for the mixers (what ``TransformerASR`` computes for its attention type);
            computed here for the mixer's ``pos_embs_kind`` when None. Must match that kind's shape.
        dynchunktrain_config : DynChunkTrainConfig, optional
            SpeechBrain's dynamic chunk configuration (chunk size in frames, left context in chunks): every
            mixer reads a frame's chunk and the allowed earlier chunks, and the convolution module nothing
            after the chunk. A mixer that cannot honour it raises (``dynchunk_left_contexts``), so does a
            causal encoder. ``src_mask`` must then be None or SpeechBrain's chunk mask for it (what
            ``TransformerASR.encode`` passes).
        output_hidden_states : bool, optional
            None uses the constructor's setting.

        Returns
        -------
        out : torch.Tensor
            (B, T, E), after the final layer norm.
        attentions : list
            One None per block run.
        hidden : list of torch.Tensor
            Only with ``output_hidden_states``: the block input and each block's output
            (num_layers + 1 tensors of shape (B, T, E); a block skipped by LayerDrop repeats its input).
        """
        length = src.shape[1]
        if src_mask is not None and tuple(src_mask.shape[-2:]) != (length, length):
            raise ValueError(
                f"MixerConformerEncoder: src_mask is a (T, T) attention mask, T={length}, got "
                f"{tuple(src_mask.shape)}; pass the (B, T) padding mask as src_key_padding_mask= "
                "(SpeechBrain's ConformerEncoder argument order)"
            )
        if dynchunktrain_config is not None:
            self.check_chunks(dynchunktrain_config)
            if src_mask is not None:
                chunk_mask = make_transformer_src_mask(src, dynchunktrain_config=dynchunktrain_config)
                if not torch.equal(src_mask.to(torch.bool), chunk_mask):
                    raise ValueError("MixerConformerEncoder: with a dynchunktrain_config, src_mask must be None or "
                                     "SpeechBrain's chunk mask for it (the mixers apply the chunks themselves)")
                src_mask = None
        src_key_padding_mask = check_padding_mask(src_key_padding_mask, src)
        if self.input_positions == "absolute":
            src = src + absolute_sinusoids(src.shape[1], src.shape[2], src.device, src.dtype)
        if pos_embs is None:
            pos_embs = positional_embeddings(self.pos_embs_kind, src)
        if self.causal and src_mask is None:
            src_mask = get_lookahead_mask(src)
        if output_hidden_states is None:
            output_hidden_states = self.output_hidden_states
        hidden = [src] if output_hidden_states else None
        attentions = []
        x = src
        skipped = [False] * len(self.layers)
        if self.training and self.layerdrop_prob > 0:
            skipped = layerdrop_decisions(len(self.layers), self.layerdrop_prob)
        for layer, skip in zip(self.layers, skipped):
            if not skip:
                x = layer(x, src_key_padding_mask, pos_embs, src_mask, dynchunktrain_config)
                attentions.append(None)
            if hidden is not None:
                hidden.append(x)
        if hidden is not None:
            return self.norm(x), attentions, hidden
        return self.norm(x), attentions

    def check_chunks(self, dynchunktrain_config) -> None:
        """A ValueError when this encoder cannot run in the chunks of ``dynchunktrain_config`` (a causal encoder,
        or a mixer without that chunked form: see each mixer's ``dynchunk_left_contexts``)."""
        if self.causal:
            raise ValueError("MixerConformerEncoder(causal=True) cannot also run in chunks (dynchunktrain_config): "
                             "build it with causal=False for dynamic chunk training")
        mixer = self.layers[0].mha_layer
        check_chunk_config(getattr(mixer, "mixer_name", type(mixer).__name__), dynchunktrain_config,
                           getattr(mixer, "dynchunk_left_contexts", ()))

    def make_streaming_context(self, dynchunktrain_config) -> MixerConformerEncoderStreamingContext:
        """A blank streaming context for chunks of ``dynchunktrain_config`` (SpeechBrain's name and argument)."""
        self.check_chunks(dynchunktrain_config)
        layers = [layer.make_streaming_context(dynchunktrain_config) for layer in self.layers]
        return MixerConformerEncoderStreamingContext(dynchunktrain_config, layers)

    def forward_streaming(
        self, src: torch.Tensor, context: MixerConformerEncoderStreamingContext, pos_embs: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, list]:
        """Encodes the next chunk (B, K, E) of a stream (SpeechBrain's ``ConformerEncoder.forward_streaming``):
        the frames :meth:`forward` with ``context.dynchunktrain_config`` gives them over the whole stream.

        Every chunk has ``chunk_size`` frames but the last, which may be shorter and ends the stream.
        ``pos_embs`` is accepted for SpeechBrain's call and not read: each mixer computes its positions.
        Returns (out (B, K, E), one None per layer).
        """
        chunk_size = context.dynchunktrain_config.chunk_size
        if context.ended:
            raise ValueError("MixerConformerEncoder.forward_streaming: a chunk shorter than chunk_size ended this "
                             "stream; start another with make_streaming_context")
        if not 1 <= src.shape[1] <= chunk_size:
            raise ValueError(f"MixerConformerEncoder.forward_streaming: a chunk has 1 to chunk_size={chunk_size} "
                             f"frames, got {src.shape[1]}")
        context.ended = src.shape[1] < chunk_size
        x = src
        if self.input_positions == "absolute":
            x = x + absolute_sinusoids(x.shape[1], x.shape[2], x.device, x.dtype, start=context.frames)
        for layer, layer_context in zip(self.layers, context.layers):
            x = layer.forward_streaming(x, layer_context)
        context.frames += src.shape[1]
        return self.norm(x), [None] * len(self.layers)
