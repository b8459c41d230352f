"""Output units of the MP3S ASR heads (characters or SentencePiece BPE) and their test decoding.

MP3S trains LibriSpeech on characters and Common Voice on a 100-unit SentencePiece BPE, decodes
greedily at validation and with SpeechBrain's ``CTCBeamSearcher`` at test (optionally with a KenLM
n-gram); greedy test decoding is kept as the faster option.
"""

from __future__ import annotations

from pathlib import Path

import torch
from speechbrain.decoders import ctc_greedy_decode
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)


class CharacterUnits:
    """Characters of a ``CTCTextEncoder``; head outputs past its labels read as nothing.

    Example
    -------
    >>> from speechbrain.dataio.encoder import CTCTextEncoder
    >>> encoder = CTCTextEncoder()
    >>> encoder.insert_blank(index=0)
    >>> encoder.update_from_iterable(list("AB "))  # A: 1, B: 2, space: 3
    >>> units = CharacterUnits(encoder, num_outputs=6)
    >>> len(units.vocabulary), units.words([1, 3, 2])
    (6, ['A', 'B'])
    """

    kind = "char"

    def __init__(self, label_encoder, num_outputs: int) -> None:
        symbols = label_encoder.ind2lab
        # CTCBeamSearcher reads one string per output; unused outputs are empty strings.
        self.vocabulary = [str(symbols.get(i, "")) for i in range(num_outputs)]
        self.blank = label_encoder.get_blank_index() if hasattr(label_encoder, "get_blank_index") else 0
        self.vocabulary[self.blank] = ""

    def words(self, ids) -> list[str]:
        return "".join(self.vocabulary[int(i)] for i in ids).split()


class SentencePieceUnits:
    """Pieces of a trained SpeechBrain ``SentencePiece`` tokenizer (its ``sp`` processor)."""

    kind = "bpe"

    def __init__(self, tokenizer) -> None:
        self.sp = tokenizer.sp
        self.vocabulary = [self.sp.id_to_piece(i) for i in range(self.sp.vocab_size())]

    def words(self, ids) -> list[str]:
        return self.sp.decode_ids([int(i) for i in ids]).split()


def train_sentencepiece(save_folder: str | Path, train_csv: str | Path, vocab_size: int, model_type: str = "bpe",
                        character_coverage: float = 1.0):
    """SpeechBrain's SentencePiece wrapper on the ``wrd`` column of ``train_csv``, as MP3S builds it.

    The model, ``<save_folder>/<vocab_size>_<model_type>.model``, is trained once; a rerun loads it.
    """
    from speechbrain.tokenizers.SentencePiece import SentencePiece

    model = Path(save_folder) / f"{vocab_size}_{model_type}.model"
    reused = model.is_file()
    tokenizer = SentencePiece(
        model_dir=str(save_folder), vocab_size=vocab_size, annotation_train=str(train_csv),
        annotation_read="wrd", model_type=model_type, character_coverage=character_coverage,
    )
    logger.info("SentencePiece %s tokenizer with %d units %s %s", model_type, tokenizer.sp.vocab_size(),
                "loaded from" if reused else "trained into", model)
    return tokenizer


class CTCDecoder:
    """Greedy or beam-search decoding of CTC log-probabilities (B, T, V) into words.

    Arguments
    ---------
    units : CharacterUnits or SentencePieceUnits
        The output units (their strings form the searcher's vocabulary).
    blank_index : int
        The CTC blank.
    beam_search : dict or None
        Options of SpeechBrain's ``CTCBeamSearcher`` (beam_size, beam_prune_logp, alpha, beta,
        kenlm_model_path, ...); None decodes greedily.

    Example
    -------
    >>> from speechbrain.dataio.encoder import CTCTextEncoder
    >>> encoder = CTCTextEncoder()
    >>> encoder.insert_blank(index=0)
    >>> encoder.update_from_iterable(list("AB "))  # A: 1, B: 2, space: 3
    >>> units = CharacterUnits(encoder, 4)
    >>> log_probs = torch.eye(4)[[1, 0, 3, 2]].unsqueeze(0).log_softmax(-1)
    >>> CTCDecoder(units, 0)(log_probs, torch.ones(1)), CTCDecoder(units, 0, {"beam_size": 1})(log_probs, torch.ones(1))
    ([['A', 'B']], [['A', 'B']])
    """

    def __init__(self, units, blank_index: int, beam_search: dict | None = None) -> None:
        self.units = units
        self.blank_index = blank_index
        self.searcher = None
        if beam_search is not None:
            from speechbrain.decoders.ctc import CTCBeamSearcher

            options = {"blank_index": blank_index, "space_token": " ", **beam_search}
            self.searcher = CTCBeamSearcher(**options, vocab_list=units.vocabulary)

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[str]]:
        if self.searcher is None:
            hyps = ctc_greedy_decode(log_probs, lengths, blank_id=self.blank_index)
            return [self.units.words(hyp) for hyp in hyps]
        return [hyps[0].text.split() for hyps in self.searcher(log_probs, lengths)]
