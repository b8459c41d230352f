"""Toy Common Voice language folder in the real on-disk layout (MP3 clips, train/dev/test .tsv)."""

from __future__ import annotations

import hashlib
import unicodedata
from pathlib import Path

import soundfile as sf
from speechbrain.utils.logger import get_logger

from speechbrain_ext.data.synth import (
    seeded_rng,
    synthesize_utterance,
    toy_speaker,
)

logger = get_logger(__name__)

#: Toy Common Voice sentences per language, written as contributors type them (capitals,
#: punctuation, the language's own letters: Welsh ŵ ŷ, Basque ñ).
_COMMONVOICE_SENTENCES: dict[str, tuple[str, ...]] = {
    "cy": (
        "Bore da, mae hi'n bwrw glaw.", "Mae'r dŵr yn oer iawn!", "Diolch yn fawr am y llyfr.",
        "Dw i'n byw mewn tŷ bach.", "Mae'r gath yn cysgu ar y gwely.", "Ble mae'r ysgol?",
        "Rydyn ni'n chwarae yn yr ardd.", "Mae Cymru'n wlad hardd.",
    ),
    "eu": (
        "Egun on, zer moduz zaude?", "Eskerrik asko, lagun.", "Etxea mendiaren ondoan dago.",
        "Ikurriña balkoian dago!", "Gaur itsasoa oso lasai dago.", "Nire izena Miren da.",
        "Urte berri on denoi.", "Mahaia handia eta zaharra da.",
    ),
}  # fmt: skip
#: Header of the split .tsv files of recent releases (Common Voice 17), read by column name.
COMMONVOICE_TSV_HEADER: tuple[str, ...] = (
    "client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
    "age", "gender", "accents", "variant", "locale", "segment",
)  # fmt: skip
_COMMONVOICE_SPLITS: tuple[str, ...] = ("train", "dev", "test")


def write_toy_commonvoice(
    root: str | Path,
    language: str = "cy",
    clips_per_split: int = 4,
    seed: int = 0,
    speakers_per_split: int = 2,
    sample_rate: int = 48000,
) -> Path:
    """Writes a toy Common Voice language folder in the real on-disk layout.

    `<root>/<language>/clips/common_voice_<language>_<N>.mp3` (mono MP3 at `sample_rate`,
    48 kHz as most Common Voice clips) and `train.tsv`, `dev.tsv`, `test.tsv` (tab-separated,
    with the columns `COMMONVOICE_TSV_HEADER` of recent releases: a 128-hex-digit
    `client_id` per speaker, `path` the clip's file name, `sentence` as typed with capitals
    and punctuation, ...). Sentences are a few Welsh ("cy") or Basque ("eu") ones, taken in
    turn, with the language's letters (ŵ, ŷ, ñ) and punctuation to exercise transcript
    normalisation; the synthesizer says a letter with a diacritic as the bare letter.
    Speakers of different splits are disjoint, as in Common Voice. The same arguments
    always write the same audio.

    Arguments
    ---------
    root : str or Path
        Folder in which `<language>/` is created (like `cv-corpus-17.0-2024-03-15/`).
    language : str
        "cy" (Welsh) or "eu" (Basque).
    clips_per_split : int
        Clips in each split.
    seed : int
        Seed of the whole corpus.
    speakers_per_split : int
        Speakers (client IDs) of each split.
    sample_rate : int
        Sampling rate of the MP3 files (Common Voice: 48000, a few 32000).

    Returns
    -------
    Path
        The `<root>/<language>` folder.

    Example
    -------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> cy = write_toy_commonvoice(tmp.name, clips_per_split=1)
    >>> sorted(p.name for p in cy.iterdir()), len(list((cy / "clips").glob("*.mp3")))
    (['clips', 'dev.tsv', 'test.tsv', 'train.tsv'], 3)
    >>> tmp.cleanup()
    """
    if language not in _COMMONVOICE_SENTENCES:
        raise ValueError(f"no toy sentences for language {language!r}; choose from {sorted(_COMMONVOICE_SENTENCES)}")
    if clips_per_split < 1 or speakers_per_split < 1:
        raise ValueError("clips_per_split and speakers_per_split must be >= 1")
    lang_dir = Path(root) / language
    sentences = _COMMONVOICE_SENTENCES[language]
    for s, split in enumerate(_COMMONVOICE_SPLITS):
        clients = []
        for i in range(speakers_per_split):
            client_id = hashlib.sha512(f"{seed}-{language}-{split}-{i}".encode()).hexdigest()
            clients.append((client_id, toy_speaker(client_id[:16], seed=seed, sex="F" if i % 2 == 0 else "M")))
        lines = ["\t".join(COMMONVOICE_TSV_HEADER) + "\n"]
        for c in range(clips_per_split):
            name = f"common_voice_{language}_{18000000 + 100000 * s + c}.mp3"
            rng = seeded_rng(seed, "commonvoice", name)
            sentence = sentences[(s * clips_per_split + c) % len(sentences)]  # in turn: every sentence is used
            client_id, speaker = clients[c % len(clients)]
            # The synthesizer knows A-Z: say "dŵr" as "DWR".
            spoken = unicodedata.normalize("NFD", sentence).encode("ascii", "ignore").decode().upper()
            words = "".join(ch if ch.isalpha() else " " for ch in spoken).split()
            wav = synthesize_utterance(words, speaker, rng, sample_rate)
            (lang_dir / "clips").mkdir(parents=True, exist_ok=True)
            sf.write(lang_dir / "clips" / name, wav, sample_rate, format="MP3", subtype="MPEG_LAYER_III")
            sentence_id = hashlib.sha256(sentence.encode()).hexdigest()
            gender = "female_feminine" if speaker.sex == "F" else "male_masculine"
            fields = [client_id, name, sentence_id, sentence, "", "2", "0", "twenties", gender, "", "", language, ""]
            lines.append("\t".join(fields) + "\n")
        (lang_dir / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    logger.info("Wrote toy Common Voice (%s) in %s", language, lang_dir)
    return lang_dir
