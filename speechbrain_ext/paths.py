"""Where the shipped recipes are, in a source checkout and after a (non-editable) ``pip install``,
and the optional plotting dependency."""

from __future__ import annotations

from pathlib import Path

from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)
PACKAGE = Path(__file__).resolve().parent


def recipes_dir(*parts: str) -> Path:
    """``recipes/<parts>``: shipped inside the installed package (``speechbrain_ext/recipes``, copied there
    by setup.py's build), or beside the package in a source checkout / editable install.

    Example
    -------
    >>> (recipes_dir("LibriSpeech", "BEST-RQ") / "train.py").is_file()
    True
    """
    for root in (PACKAGE / "recipes", PACKAGE.parent / "recipes"):
        if root.is_dir():
            return root.joinpath(*parts)
    raise FileNotFoundError(
        f"the recipes are neither in {PACKAGE / 'recipes'} (installed package) nor in "
        f"{PACKAGE.parent / 'recipes'} (source checkout): reinstall speechbrain_ext"
    )


def pyplot(purpose: str):
    """matplotlib's pyplot with the file-only Agg backend, or None (with a warning naming ``purpose``)
    when the ``plot`` extra is not installed."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("matplotlib is not installed: no %s (pip install 'speechbrain_ext[plot]')", purpose)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
