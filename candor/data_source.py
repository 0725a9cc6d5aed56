"""Where the SQuAD 2.0 base data lives: one answer for the loop, fine-tuning, evaluation and benchmarks.

Order: an explicit path (a command's ``--source``, or ``source:`` in params.yaml), else the
``CANDOR_DATA_SOURCE`` setting, else the repository layout's ``../shared/data/squad2`` beside a
source checkout, only where that folder exists. Nothing found is a ``SettingsError`` naming the
setting and the official files, never a traceback.

A source is a folder of ``<split>.questions.jsonl`` + ``<split>.paragraphs.jsonl`` files, a folder
holding the official ``train-v2.0.json`` / ``dev-v2.0.json``, or one SQuAD v2 ``.json`` file (used
for every split). Ground level: imports only ``candor.settings``.
"""

from __future__ import annotations

from pathlib import Path

from candor.settings import Settings, SettingsError, get_settings

# a source checkout beside the project's shared data (the developers' and CI's layout)
REPO_LAYOUT_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad2"
OFFICIAL_URL = "https://rajpurkar.github.io/SQuAD-explorer/"
HOW_TO = (
    "Download the official SQuAD 2.0 files (train-v2.0.json, dev-v2.0.json) from "
    f"{OFFICIAL_URL} into one folder and set CANDOR_DATA_SOURCE to that folder "
    "(or to one SQuAD v2 .json file, or to a folder of <split>.questions.jsonl + <split>.paragraphs.jsonl)."
)


def resolve_data_source(explicit: Path | str | None = None, settings: Settings | None = None) -> Path:
    """The base data's location: ``explicit``, else CANDOR_DATA_SOURCE, else the repository layout."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise SettingsError(f"SQuAD data not found at {path} (a --source option or a params `source:`). {HOW_TO}")
        return path
    configured = (settings or get_settings()).data_source
    if configured is not None:
        path = Path(configured).expanduser()
        if not path.exists():
            raise SettingsError(f"CANDOR_DATA_SOURCE={configured} does not exist. {HOW_TO}")
        return path
    if REPO_LAYOUT_SOURCE.is_dir():
        return REPO_LAYOUT_SOURCE
    raise SettingsError(f"No SQuAD 2.0 data configured: CANDOR_DATA_SOURCE is not set. {HOW_TO}")


def split_path(source: Path, split: str) -> Path:
    """What to load for ``split``: a folder's official ``<split>-v2.0.json`` when it has no JSONL pair."""
    source = Path(source)
    if source.is_dir() and not (source / f"{split}.questions.jsonl").exists():
        official = source / f"{split}-v2.0.json"
        if official.is_file():
            return official
    return source


def data_split(split: str, explicit: Path | str | None = None, settings: Settings | None = None) -> Path:
    """The path ``candor.finetune.squad.load_squad(path, split)`` reads for ``split``."""
    return split_path(resolve_data_source(explicit, settings), split)


def split_files(path: Path, split: str) -> list[Path]:
    """The files a split is read from (for hashing); a missing split is a SettingsError saying what is missing."""
    path = Path(path)
    if path.is_file():
        return [path]
    pair = [path / f"{split}.questions.jsonl", path / f"{split}.paragraphs.jsonl"]
    missing = [p.name for p in pair if not p.is_file()]
    if missing:
        raise SettingsError(
            f"{path} holds no '{split}' split: missing {', '.join(missing)} (or the official {split}-v2.0.json). "
            + HOW_TO
        )
    return pair
