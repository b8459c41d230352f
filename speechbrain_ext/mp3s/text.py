"""Output units of the MP3S ASR heads (characters or SentencePiece BPE), their decoding and error rates.

MP3S trains LibriSpeech on characters and Common Voice on a 100-unit SentencePiece BPE, decodes
greedily at validation and with SpeechBrain's ``CTCBeamSearcher`` at test (optionally with a KenLM
n-gram); greedy test decoding is kept as the faster option. :class:`TranscriptionStats` scores the
decoded words (WER, CER) and writes them beside their references.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import torch
from speechbrain.decoders import ctc_greedy_decode
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import ErrorRateStats

from speechbrain_ext.files import atomic_writer

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
    """Pieces of a trained SpeechBrain ``SentencePiece`` tokenizer (its ``sp`` processor).

    With ``num_outputs`` (the head's outputs, at least the pieces), the outputs past the pieces read
    as nothing, as for :class:`CharacterUnits`.
    """

    kind = "bpe"

    def __init__(self, tokenizer, num_outputs: int | None = None) -> None:
        self.sp = tokenizer.sp
        pieces = self.sp.vocab_size()
        if num_outputs is not None and num_outputs < pieces:
            raise ValueError(f"the tokenizer has {pieces} pieces but the head {num_outputs} outputs")
        self.vocabulary = [self.sp.id_to_piece(i) if i < pieces else "" for i in range(num_outputs or pieces)]

    def words(self, ids) -> list[str]:
        pieces = self.sp.vocab_size()
        return self.sp.decode_ids([int(i) for i in ids if int(i) < pieces]).split()


def transcripts_digest(train_csv: str | Path) -> str:
    """SHA-256 of the ``wrd`` column of a manifest, in its order: the text a tokenizer is trained on."""
    digest = hashlib.sha256()
    with open(train_csv, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            digest.update(row["wrd"].encode() + b"\n")
    return digest.hexdigest()


def train_sentencepiece(save_folder: str | Path, train_csv: str | Path, vocab_size: int, model_type: str = "bpe",
                        character_coverage: float = 1.0):
    """SpeechBrain's SentencePiece wrapper on the ``wrd`` column of ``train_csv``, as MP3S builds it.

    The model, ``<save_folder>/<vocab_size>_<model_type>.model``, is trained once; a rerun loads it. Beside it,
    ``<model>.source.json`` records what it was trained on (the transcripts' digest and the options): a model
    trained on other transcripts is refused with both digests named, not used to encode these. An empty or
    unreadable model (an interrupted training) is an error naming the file.
    """
    from speechbrain.tokenizers.SentencePiece import SentencePiece

    model = Path(save_folder) / f"{vocab_size}_{model_type}.model"
    source = model.with_name(model.name + ".source.json")
    wanted = {"transcripts_digest": transcripts_digest(train_csv), "vocab_size": vocab_size,
              "model_type": model_type, "character_coverage": character_coverage}
    reused = model.is_file()
    if reused:
        if model.stat().st_size == 0:
            raise ValueError(f"the SentencePiece model {model} is empty (its training was interrupted?): delete it "
                             f"to train it again")
        recorded = json.loads(source.read_text()) if source.is_file() else None
        if recorded != wanted:
            raise ValueError(f"the SentencePiece model {model} was trained on other transcripts or options "
                             f"({recorded} there, {wanted} for {train_csv}): give another --output_folder, or "
                             f"delete the model to train it on these")
    try:
        tokenizer = SentencePiece(
            model_dir=str(save_folder), vocab_size=vocab_size, annotation_train=str(train_csv),
            annotation_read="wrd", model_type=model_type, character_coverage=character_coverage,
        )
    except (RuntimeError, OSError) as error:
        raise ValueError(f"the SentencePiece model {model} cannot be read or trained: {error}") from error
    if not reused and if_main_process():
        with atomic_writer(source) as out:
            out.write(json.dumps(wanted, indent=2) + "\n")
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
        kenlm_model_path, ...) for the calls with ``beam=True``; None decodes every call greedily.
    test_decoding : str
        "beam" (MP3S: the calls with ``beam=True`` search) or "greedy" (every call greedy, faster),
        as a recipe's YAML says.

    Example
    -------
    >>> from speechbrain.dataio.encoder import CTCTextEncoder
    >>> encoder = CTCTextEncoder()
    >>> encoder.insert_blank(index=0)
    >>> encoder.update_from_iterable(list("AB "))  # A: 1, B: 2, space: 3
    >>> units = CharacterUnits(encoder, 4)
    >>> log_probs = torch.eye(4)[[1, 0, 3, 2]].unsqueeze(0).log_softmax(-1)
    >>> decoder = CTCDecoder(units, 0, {"beam_size": 1})
    >>> decoder(log_probs, torch.ones(1)), decoder(log_probs, torch.ones(1), beam=True)
    ([['A', 'B']], [['A', 'B']])
    """

    def __init__(self, units, blank_index: int, beam_search: dict | None = None, test_decoding: str = "beam") -> None:
        if test_decoding not in ("beam", "greedy"):
            raise ValueError(f"test_decoding must be 'beam' or 'greedy', got {test_decoding!r}")
        self.units = units
        self.blank_index = blank_index
        self.searcher = None
        if beam_search is not None and test_decoding == "beam":
            from speechbrain.decoders.ctc import CTCBeamSearcher

            options = {"blank_index": blank_index, "space_token": " ", **beam_search}
            self.searcher = CTCBeamSearcher(**options, vocab_list=units.vocabulary)

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor, beam: bool = False) -> list[list[str]]:
        """The words of each utterance: by beam search when ``beam`` (and a searcher is set), else greedily."""
        log_probs, lengths = log_probs.detach().cpu(), lengths.detach().cpu()
        if self.searcher is None or not beam:
            hyps = ctc_greedy_decode(log_probs, lengths, blank_id=self.blank_index)
            return [self.units.words(hyp) for hyp in hyps]
        return [hyps[0].text.split() for hyps in self.searcher(log_probs, lengths)]


class TranscriptionStats:
    """Word and character error rates of decoded words against reference transcripts.

    Both are SpeechBrain's ``ErrorRateStats`` (the CER over the characters of the words, spaces
    included); :meth:`write` saves every hypothesis beside its reference.

    Example
    -------
    >>> stats = TranscriptionStats()
    >>> stats.append(["u1", "u2"], [["THE", "CAT"], ["A", "DOG"]], ["THE CAT", "A FROG"])
    >>> {name: round(value, 2) for name, value in stats.summarize().items()}
    {'WER': 25.0, 'CER': 15.38}
    """

    def __init__(self) -> None:
        self.wer = ErrorRateStats()
        self.cer = ErrorRateStats(split_tokens=True)
        self.rows: list[tuple[str, str, str]] = []

    def append(self, ids: list[str], words: list[list[str]], references: list[str]) -> None:
        """Adds decoded ``words`` (one list per utterance) and the ``references`` (text) of utterances ``ids``."""
        targets = [text.split() for text in references]
        self.wer.append(ids, words, targets)
        self.cer.append(ids, words, targets)
        self.rows.extend((utt, " ".join(target), " ".join(hyp)) for utt, target, hyp in zip(ids, targets, words))

    def summarize(self) -> dict[str, float]:
        """{"WER": ..., "CER": ...} in percent."""
        return {"WER": self.wer.summarize("error_rate"), "CER": self.cer.summarize("error_rate")}

    def write(self, path: str | Path) -> Path:
        """Writes ``ID,reference,hypothesis`` (one row per utterance, words separated by spaces) to ``path``."""
        with atomic_writer(Path(path)) as out:
            writer = csv.writer(out)
            writer.writerow(["ID", "reference", "hypothesis"])
            writer.writerows(self.rows)
        return Path(path)
