"""Turn files into documents, one loader per format, reporting every failure per file.

Supported: .txt, .md, .html/.htm, .pdf (pypdf) and .jsonl (one document a line).
A file that cannot be used (unreadable, binary, empty, undecodable) becomes a
``LoadFailure`` with the reason; a JSONL file reports each bad line and still
yields its good lines. Nothing here raises for bad content, so one broken file
never stops an ingest.

Document ids: a file's path relative to the directory it was found under (or its
name when given directly); a JSONL line's own ``id``/``doc_id``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from candor.errors import InvalidInputError
from candor.ingest.documents import SourceDocument, clean_title, document_from_record

TEXT_SUFFIXES = {".txt", ".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
JSONL_SUFFIXES = {".jsonl"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES | JSONL_SUFFIXES
MAX_FILE_BYTES = 200 * 1024 * 1024
_HTML_BLOCKS = [
    "p", "div", "section", "article", "main", "header", "footer", "nav", "aside", "h1", "h2", "h3", "h4",
    "h5", "h6", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "pre", "blockquote", "hr", "figure",
    "figcaption", "address", "details", "summary", "form", "fieldset",
]  # fmt: skip


@dataclass(frozen=True)
class LoadFailure:
    """A file (or one line of it) that could not be ingested, and why."""

    where: str  # relative file path, or path:line for JSONL
    reason: str
    file: str  # the relative path of the file, for prune protection


@dataclass(frozen=True)
class InputFile:
    path: Path  # where to read it
    rel: str  # its document id / display name (POSIX, relative to its root)


@dataclass
class LoadResult:
    documents: list[SourceDocument] = field(default_factory=list)
    failures: list[LoadFailure] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unsupported files found in directories
    files: int = 0

    @property
    def failed_files(self) -> set[str]:
        return {f.file for f in self.failures}


def discover(
    paths: Sequence[str | Path], follow_links: bool = False
) -> tuple[list[InputFile], list[str], list[LoadFailure]]:
    """Expand files and directories (recursively) into input files, in a stable order.

    A path that does not exist is a usage error (raised before anything is
    written: with --prune a typo must not delete a collection's documents).
    Hidden files and directories are skipped; so are unsupported files inside
    directories (returned as ``skipped``); an unsupported file named directly
    is an error.

    Symbolic links inside a directory are read only where they resolve inside that
    directory: a link out of it (``link.txt -> /etc/passwd``) would pull any file the
    ingest user can read into a collection, so it is a ``LoadFailure`` with the reason
    (the third value returned). ``follow_links`` reads such links, and walks linked
    directories, on purpose. A path named directly is read wherever it points.
    """
    if not paths:
        raise InvalidInputError("no input paths given")
    files: list[InputFile] = []
    skipped: list[str] = []
    refused: list[LoadFailure] = []
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise InvalidInputError("no such file or directory: " + ", ".join(missing))
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            root = Path(os.path.realpath(path))
            walked = {root}
            for dirpath, dirnames, filenames in os.walk(path, followlinks=follow_links):
                kept = []
                for d in sorted(dirnames):
                    full = Path(dirpath) / d
                    if d.startswith("."):
                        continue
                    if full.is_symlink():
                        real = Path(os.path.realpath(full))  # a link loop stays as it is (then unreadable)
                        if not follow_links:
                            if not _inside(real, root):
                                rel = full.relative_to(path).as_posix()
                                refused.append(LoadFailure(rel, _outside_reason("directory", real), rel))
                            continue  # a link inside the root: its files are read where they live
                        if real in walked:  # a cycle, or a folder read already
                            continue
                        walked.add(real)
                    kept.append(d)
                dirnames[:] = kept
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    full = Path(dirpath) / name
                    rel = full.relative_to(path).as_posix()
                    if full.suffix.lower() not in SUPPORTED_SUFFIXES:
                        skipped.append(rel)
                        continue
                    target = full
                    if full.is_symlink():
                        real = Path(os.path.realpath(full))  # a link loop stays as it is (then unreadable)
                        if not follow_links and not _inside(real, root):
                            refused.append(LoadFailure(rel, _outside_reason("file", real), rel))
                            continue
                        target = real  # read the file the link was checked against
                    files.append(InputFile(target, rel))
        else:
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise InvalidInputError(
                    f"{path}: unsupported file type {path.suffix or '(none)'!r}; "
                    f"supported: {', '.join(sorted(SUPPORTED_SUFFIXES))}"
                )
            files.append(InputFile(path, path.name))
    return files, skipped, refused


def _inside(real: Path, root: Path) -> bool:
    return real == root or real.is_relative_to(root)


def _outside_reason(kind: str, real: Path) -> str:
    return (
        f"symbolic link to a {kind} outside the ingest folder ({real}): not read; "
        "pass --follow-links to ingest what links point to"
    )


def load_paths(paths: Sequence[str | Path], follow_links: bool = False) -> LoadResult:
    """Load every supported file under ``paths``; duplicates ids are failures, not overwrites.

    Links out of an ingest folder are failures unless ``follow_links`` (see ``discover``).
    """
    inputs, skipped, refused = discover(paths, follow_links=follow_links)
    result = LoadResult(skipped=skipped, files=len(inputs) + len(refused), failures=list(refused))
    seen: dict[str, str] = {}
    for item in inputs:
        docs, failures = load_file(item)
        result.failures.extend(failures)
        for doc in docs:
            if doc.doc_id in seen:
                result.failures.append(
                    LoadFailure(
                        doc.source,
                        f"duplicate document id {doc.doc_id!r} (already read from {seen[doc.doc_id]})",
                        item.rel,
                    )
                )
                continue
            seen[doc.doc_id] = doc.source
            result.documents.append(doc)
    return result


def load_file(item: InputFile) -> tuple[list[SourceDocument], list[LoadFailure]]:
    """Load one file; never raises for bad content."""
    suffix = item.path.suffix.lower()
    try:
        if suffix in JSONL_SUFFIXES:
            return _load_jsonl(item)
        data = _read_bytes(item)
        if suffix in PDF_SUFFIXES:
            title, text = _pdf_text(data)
        elif suffix in HTML_SUFFIXES:
            title, text = _html_text(data)
        else:
            text = _decode_text(data)
            title = _markdown_title(text) if suffix != ".txt" else None
        if not text.strip():
            raise _Unusable("no text (empty file)" if not data.strip() else "no text after extraction")
        doc = SourceDocument(
            doc_id=item.rel,
            text=text,
            title=clean_title(title) or item.path.stem,
            source=item.rel,
            file=item.rel,
        )
        return [doc], []
    except _Unusable as exc:
        return [], [LoadFailure(item.rel, str(exc), item.rel)]


class _Unusable(Exception):
    """The reason a file cannot be ingested."""


def _read_bytes(item: InputFile) -> bytes:
    try:
        size = item.path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise _Unusable(f"too large ({size} bytes; the limit is {MAX_FILE_BYTES})")
        with open(item.path, "rb") as fh:
            return fh.read()
    except IsADirectoryError:
        raise _Unusable("is a directory") from None
    except OSError as exc:
        raise _Unusable(f"cannot read: {exc.strerror or exc}") from None


def _decode_text(data: bytes) -> str:
    if not data.strip():
        raise _Unusable("empty file")
    if b"\x00" in data[:8192]:
        raise _Unusable("binary file (contains NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Unusable(f"not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None


def _markdown_title(text: str) -> str | None:
    for line in text.splitlines()[:50]:
        if line.startswith("# "):
            return line[2:].strip()
    return None


def _html_text(data: bytes) -> tuple[str | None, str]:
    """Visible text of an HTML page: scripts, styles and other non-content elements removed."""
    from bs4 import BeautifulSoup, UnicodeDammit

    if not data.strip():
        raise _Unusable("empty file")
    if b"\x00" in data[:8192]:
        raise _Unusable("binary file (contains NUL bytes), not HTML")
    # The page's declared charset wins, then detection; replacement characters mean it failed.
    dammit = UnicodeDammit(data, is_html=True)
    if dammit.unicode_markup is None or dammit.contains_replacement_characters:
        raise _Unusable("cannot decode the HTML (no usable charset)")
    soup = BeautifulSoup(dammit.unicode_markup, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "template", "head", "svg", "iframe"]):
        tag.decompose()
    # Block elements end a paragraph; inline ones (a, code, em...) stay inside their sentence.
    for tag in soup.find_all(_HTML_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    for br in soup.find_all("br"):
        br.replace_with("\n")
    paragraphs = (" ".join(p.split()) for p in soup.get_text().split("\n\n"))
    return title, "\n\n".join(p for p in paragraphs if p)


def _pdf_text(data: bytes) -> tuple[str | None, str]:
    import io
    import logging

    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    if not data.strip():
        raise _Unusable("empty file")
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about odd PDFs are not ours to show
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise _Unusable("encrypted PDF")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except _Unusable:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise _Unusable(f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    text = "\n\n".join(p for p in pages if p)
    if not text.strip():
        raise _Unusable("PDF has no extractable text (scanned images?)")
    return (str(title) if title else None), text


def _load_jsonl(item: InputFile) -> tuple[list[SourceDocument], list[LoadFailure]]:
    data = _read_bytes(item)
    if not data.strip():
        raise _Unusable("empty file")
    if b"\x00" in data[:8192]:
        raise _Unusable("binary file (contains NUL bytes), not JSONL")
    docs: list[SourceDocument] = []
    failures: list[LoadFailure] = []
    seen: set[str] = set()
    for lineno, raw in enumerate(_lines(data), start=1):
        where = f"{item.rel}:{lineno}"
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            failures.append(LoadFailure(where, f"not valid UTF-8 (offset {exc.start} in the line)", item.rel))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            failures.append(LoadFailure(where, f"invalid JSON ({exc.msg} at column {exc.colno})", item.rel))
            continue
        try:
            doc = document_from_record(record, source_prefix=item.rel, file=item.rel)
        except ValueError as exc:
            failures.append(LoadFailure(where, str(exc), item.rel))
            continue
        if doc.doc_id in seen:
            failures.append(LoadFailure(where, f"duplicate id {doc.doc_id!r} in this file", item.rel))
            continue
        seen.add(doc.doc_id)
        docs.append(doc)
    if not docs and not failures:
        failures.append(LoadFailure(item.rel, "no documents (only blank lines)", item.rel))
    return docs, failures


def _lines(data: bytes) -> Iterator[bytes]:
    yield from data.split(b"\n")
