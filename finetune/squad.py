"""Load SQuAD-2.0-style data into one in-memory shape.

Two inputs are accepted, so the builder and the evaluation never care where the
data came from: the project's JSONL pair (``<split>.questions.jsonl`` +
``<split>.paragraphs.jsonl``, see ../shared/data/README.md) and the official
SQuAD v2 JSON (``{"data": [{"title", "paragraphs": [{"context", "qas"}]}]}``).
Pure Python; bad files raise InvalidInputError with the offending line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from candor.errors import InvalidInputError, NotFoundError
from candor.jsonl import json_objects


@dataclass(frozen=True)
class Paragraph:
    doc_id: str
    title: str
    text: str

    @property
    def article(self) -> str:
        """Questions and paragraphs are split by article (the Wikipedia page)."""
        return self.title


@dataclass(frozen=True)
class Question:
    id: str
    doc_id: str
    question: str
    answers: tuple[str, ...]
    is_impossible: bool
    answer_starts: tuple[int, ...] = ()  # character offsets of ``answers`` in the paragraph, where the data gives them


@dataclass
class Corpus:
    paragraphs: dict[str, Paragraph] = field(default_factory=dict)
    questions: list[Question] = field(default_factory=list)

    def article_of(self, q: Question) -> str:
        return self.paragraphs[q.doc_id].article

    def articles(self) -> list[str]:
        return sorted({p.article for p in self.paragraphs.values()})

    def subset(self, articles: set[str]) -> Corpus:
        """The paragraphs and questions of the given articles only."""
        paras = {k: p for k, p in self.paragraphs.items() if p.article in articles}
        qs = [q for q in self.questions if q.doc_id in paras]
        return Corpus(paras, qs)


def _read_jsonl(path: Path) -> list[dict]:
    return [row for _, row in json_objects(path)]


def _need(row: dict, key: str, where: str) -> object:
    if key not in row:
        raise InvalidInputError(f"{where}: missing field {key!r}")
    return row[key]


def load_jsonl_pair(questions_path: Path, paragraphs_path: Path) -> Corpus:
    corpus = Corpus()
    for i, row in enumerate(_read_jsonl(paragraphs_path), start=1):
        where = f"{paragraphs_path}:{i}"
        doc_id = str(_need(row, "doc_id", where))
        title = str(row.get("title") or doc_id.split("#")[0])
        corpus.paragraphs[doc_id] = Paragraph(doc_id, title, str(_need(row, "text", where)))
    for i, row in enumerate(_read_jsonl(questions_path), start=1):
        where = f"{questions_path}:{i}"
        doc_id = str(_need(row, "doc_id", where))
        if doc_id not in corpus.paragraphs:
            raise InvalidInputError(f"{where}: doc_id {doc_id!r} is not in {paragraphs_path.name}")
        answers = tuple(str(a) for a in row.get("answers") or [])
        impossible = bool(row.get("is_impossible", not answers))
        if not impossible and not answers:
            raise InvalidInputError(f"{where}: answerable question without answers")
        starts = _answer_starts(row.get("answer_starts"), len(answers), where)
        qid, text = str(_need(row, "id", where)), str(_need(row, "question", where))
        corpus.questions.append(Question(qid, doc_id, text, answers, impossible, starts))
    return corpus


def _answer_starts(raw: object, n_answers: int, where: str) -> tuple[int, ...]:
    """``answer_starts`` when present: one non-negative integer per answer."""
    if raw is None:
        return ()
    ok = isinstance(raw, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in raw)
    if not ok or len(raw) != n_answers:
        raise InvalidInputError(f"{where}: answer_starts must be one non-negative integer per answer")
    return tuple(raw)


def load_official_json(path: Path) -> Corpus:
    """The official SQuAD v2 file; paragraphs get ids ``<title>#<index>`` like ours."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise InvalidInputError(f"{path}: not SQuAD JSON (no top-level 'data' list)")
    corpus = Corpus()
    for article in data["data"]:
        title = str(article.get("title", "untitled"))
        for j, para in enumerate(article.get("paragraphs", [])):
            doc_id = f"{title}#{j}"
            corpus.paragraphs[doc_id] = Paragraph(doc_id, title.replace("_", " "), str(para["context"]))
            for qa in para.get("qas", []):
                first_start: dict[str, object] = {}
                for a in qa.get("answers", []):
                    first_start.setdefault(str(a["text"]), a.get("answer_start"))
                answers = tuple(first_start)
                starts = tuple(first_start.values())
                if not all(isinstance(x, int) and not isinstance(x, bool) for x in starts):
                    starts = ()
                impossible = bool(qa.get("is_impossible", not answers))
                corpus.questions.append(
                    Question(str(qa["id"]), doc_id, str(qa["question"]), answers, impossible, starts)
                )
    return corpus


def load_squad(source: Path, split: str | None = None) -> Corpus:
    """Load ``source``: a SQuAD v2 ``.json`` file, or a folder holding ``<split>.*.jsonl``."""
    source = Path(source)
    if source.is_file():
        if source.suffix == ".json":
            return load_official_json(source)
        raise InvalidInputError(f"{source}: expected a SQuAD v2 .json file or a folder of .jsonl files")
    if not source.is_dir():
        raise NotFoundError(f"SQuAD data not found: {source}")
    if split is None:
        raise InvalidInputError("a folder of JSONL files needs a split name (train, dev, ...)")
    q, p = source / f"{split}.questions.jsonl", source / f"{split}.paragraphs.jsonl"
    for f in (q, p):
        if not f.exists():
            raise NotFoundError(f"missing {f}")
    return load_jsonl_pair(q, p)
