"""Reader examples: (question, passage, answer span or none) from SQuAD-2.0-style data.

The extractive answerability reader learns two things from one example: where
the answer is (a character span) and whether there is one at all (no span:
the SQuAD 2.0 convention, the span collapses onto the [CLS] token). Four kinds:

- answerable: an answerable question with its own paragraph and the answer's
  offset; offsets come from the data where given (``answer_starts``, the
  official JSON's ``answer_start``), else from locating the answer text in the
  paragraph (first exact, then case-insensitive); answers found nowhere are
  counted and dropped;
- unanswerable: SQuAD's impossible question with its own paragraph;
- retrieval_miss: an answerable question with another paragraph of the same
  article that holds none of its answers (what a retrieval miss looks like);
- answer_removed: an answerable question with its paragraph minus every
  sentence that holds an answer.

Deterministic for a seed. Pure Python: no torch, no tokenizer.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from candor.finetune.answer_spans import LocateStats, locate_answer
from candor.finetune.squad import Corpus
from candor.finetune.verifier import remove_answer_sentences

KINDS = ("answerable", "unanswerable", "retrieval_miss", "answer_removed")


@dataclass(frozen=True)
class ReaderExample:
    id: str
    question: str
    context: str
    answer_text: str  # "" when the passage does not answer the question
    answer_start: int  # -1 when the passage does not answer the question
    kind: str
    article: str

    @property
    def answerable(self) -> bool:
        return self.answer_start >= 0

    def to_row(self) -> dict:
        return asdict(self)


def build_reader_examples(
    corpus: Corpus, seed: int, miss_ratio: float, removed_ratio: float, salt: str
) -> tuple[list[ReaderExample], dict]:
    """Every question once with its own paragraph, plus the derived negatives; shuffled."""
    rng = random.Random(f"reader:{salt}:{seed}")
    by_article: dict[str, list[str]] = {}
    for doc_id in sorted(corpus.paragraphs):
        by_article.setdefault(corpus.paragraphs[doc_id].article, []).append(doc_id)
    stats = LocateStats()
    out: list[ReaderExample] = []
    for q in sorted(corpus.questions, key=lambda q: q.id):
        para = corpus.paragraphs[q.doc_id]
        if q.is_impossible:
            out.append(ReaderExample(q.id, q.question, para.text, "", -1, "unanswerable", para.article))
            continue
        found = locate_answer(q, para.text, stats)
        if found is None:
            continue
        out.append(ReaderExample(q.id, q.question, para.text, found[0], found[1], "answerable", para.article))
        others = [d for d in by_article[para.article] if d != q.doc_id]
        if others and rng.random() < miss_ratio:
            other = corpus.paragraphs[rng.choice(others)]
            if not any(a.lower() in other.text.lower() for a in q.answers):
                out.append(
                    ReaderExample(f"{q.id}:miss", q.question, other.text, "", -1, "retrieval_miss", para.article)
                )
        if rng.random() < removed_ratio:
            rest = remove_answer_sentences(para.text, q.answers)
            if rest is not None:
                out.append(ReaderExample(f"{q.id}:removed", q.question, rest, "", -1, "answer_removed", para.article))
    rng.shuffle(out)
    counts = {k: sum(e.kind == k for e in out) for k in KINDS}
    return out, {"examples": len(out), "by_kind": counts, "offsets": asdict(stats)}
