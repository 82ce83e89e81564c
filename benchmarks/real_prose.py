"""``real_prose``: a fixed development set of questions over real documents, with a held-out half.

On the RULER-style tasks the answers are planted needles; here they are facts of real text: licences
(``/usr/share/common-licenses``), Debian manual pages, Python's own documentation and package READMEs, each
snapshotted into ``benchmarks/data/real_prose/docs/`` with its source and licence recorded in
``benchmarks/data/real_prose/real_prose.json``, so the set never depends on what a machine has installed.

Every question is a :class:`~benchmarks.tasks.Sample` whose context is one whole document (2,300-6,000
SmolLM2 tokens). Its answers are short strings that occur exactly once in that document; a *two-fact*
question needs two of them, from different places. Each answer span is labelled ``start``, ``middle`` or
``end`` by the third of the document (in characters) it starts in. Documents, not questions, are split into
``dev`` and ``heldout`` halves of similar size and two-fact share; nobody tunes on ``heldout``.

Run ``python -m benchmarks.real_prose`` to check the data (``--refresh`` recomputes spans, positions,
checksums and token counts after editing it; counting tokens loads the speculator). Pure Python otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.tasks import Sample
from specprefill.errors import ConfigurationError

__all__ = [
    "DATA_DIR",
    "DATA_FILE",
    "INSTRUCTION",
    "MAX_TOKENS",
    "MIN_TOKENS",
    "POSITIONS",
    "SPLITS",
    "SPLIT_CHOICES",
    "TASK",
    "Document",
    "Question",
    "RealProse",
    "check",
    "load_real_prose",
    "main",
    "occurrences",
    "position_of",
    "propose_split",
    "real_prose_samples",
    "refresh",
]

TASK = "real_prose"
"""The task name in ``--tasks`` and in result rows."""
SPLITS: tuple[str, ...] = ("dev", "heldout")
"""The two halves, split by document."""
SPLIT_CHOICES: tuple[str, ...] = (*SPLITS, "all")
"""What ``--split`` accepts."""
POSITIONS: tuple[str, ...] = ("start", "middle", "end")
"""Answer position labels: the third of the document (by character offset) an answer starts in."""
MIN_TOKENS, MAX_TOKENS = 2300, 6000
"""Allowed document length in speculator (SmolLM2) tokens."""

DATA_DIR = Path(__file__).resolve().parent / "data" / "real_prose"
"""The snapshot: ``real_prose.json`` and ``docs/*.txt`` (located from this file, not the working directory)."""
DATA_FILE = "real_prose.json"

INSTRUCTION = (
    "Answer the question using only the document below. Give just the answer (for a question with two "
    "parts, both answers), as briefly as possible."
)
"""The instruction every real-prose prompt starts with."""

Span = tuple[int, int]


@dataclass(frozen=True)
class Document:
    """One snapshotted document."""

    id: str
    file: str
    title: str
    kind: str
    source: str
    licence: str
    excerpt: str
    """Empty for a whole document, else which part was kept."""
    split: str
    tokens: int
    """Length in speculator tokens (recorded by ``--refresh``)."""
    since: int
    """The set version that added the document (its half was chosen with the older documents' fixed)."""
    sha256: str
    text: str
    """The context: the file's text without its final newline."""


@dataclass(frozen=True)
class Question:
    """One question over one document."""

    id: str
    document: str
    question: str
    answers: tuple[str, ...]
    spans: tuple[Span, ...]
    """Character span of each answer in the document's text."""
    positions: tuple[str, ...]
    """``start``/``middle``/``end`` of each answer."""

    @property
    def facts(self) -> int:
        """How many separate facts the question needs (1 or 2)."""
        return len(self.answers)


@dataclass(frozen=True)
class RealProse:
    """The loaded set."""

    documents: dict[str, Document]
    questions: tuple[Question, ...]
    meta: dict[str, Any]
    """The JSON's top-level description (``name``, ``version``, ``token_counter``, ...)."""

    @property
    def fingerprint(self) -> str:
        """Short SHA-256 over the documents and questions (identifies the exact set in results)."""
        digest = hashlib.sha256()
        for doc in sorted(self.documents.values(), key=lambda d: d.id):
            digest.update(f"{doc.id}\0{doc.split}\0{doc.sha256}\0".encode())
        for q in self.questions:
            digest.update(json.dumps([q.id, q.document, q.question, list(q.answers)]).encode())
        return digest.hexdigest()[:16]

    def split_of(self, question: Question) -> str:
        """The split a question belongs to (its document's)."""
        return self.documents[question.document].split

    def select(self, split: str) -> list[Question]:
        """The questions of one split (``all``: every question), in file order."""
        if split not in SPLIT_CHOICES:
            raise ConfigurationError(f"unknown split {split!r}; choose from {', '.join(SPLIT_CHOICES)}")
        return [q for q in self.questions if split == "all" or self.split_of(q) == split]


def occurrences(text: str, needle: str) -> list[int]:
    """Start offsets of every (possibly overlapping) occurrence of ``needle`` in ``text``."""
    out: list[int] = []
    start = text.find(needle)
    while needle and start >= 0:
        out.append(start)
        start = text.find(needle, start + 1)
    return out


def position_of(offset: int, length: int) -> str:
    """``start``, ``middle`` or ``end``: the third of a ``length``-character text that ``offset`` falls in."""
    if length <= 0:
        raise ValueError("empty text has no positions")
    return POSITIONS[min(2, 3 * offset // length)]


def _read_json(data_dir: Path) -> dict[str, Any]:
    path = data_dir / DATA_FILE
    if not path.is_file():
        raise ConfigurationError(f"real-prose data missing: {path}")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _text(data_dir: Path, file: str) -> str:
    return (data_dir / "docs" / file).read_text(encoding="utf-8").removesuffix("\n")


def load_real_prose(data_dir: Path = DATA_DIR) -> RealProse:
    """Load the snapshot (documents and questions) from ``data_dir``.

    Raises:
        ConfigurationError: The data file or a document is missing, or a question names an unknown document.

    """
    data = _read_json(data_dir)
    documents: dict[str, Document] = {}
    for d in data["documents"]:
        file = data_dir / "docs" / d["file"]
        if not file.is_file():
            raise ConfigurationError(f"real-prose document missing: {file}")
        documents[d["id"]] = Document(
            id=d["id"],
            file=d["file"],
            title=d["title"],
            kind=d["kind"],
            source=d["source"],
            licence=d["licence"],
            excerpt=d.get("excerpt", ""),
            split=d.get("split", ""),
            tokens=int(d.get("tokens", 0)),
            since=int(d.get("since", 1)),
            sha256=d.get("sha256", ""),
            text=_text(data_dir, d["file"]),
        )
    questions = []
    for q in data["questions"]:
        if q["document"] not in documents:
            raise ConfigurationError(f"question {q['id']} names unknown document {q['document']!r}")
        questions.append(
            Question(
                id=q["id"],
                document=q["document"],
                question=q["question"],
                answers=tuple(q["answers"]),
                spans=tuple((int(s), int(e)) for s, e in q.get("spans", [])),
                positions=tuple(q.get("positions", [])),
            )
        )
    meta = {k: v for k, v in data.items() if k not in ("documents", "questions")}
    return RealProse(documents=documents, questions=tuple(questions), meta=meta)


def real_prose_samples(split: str = "all", data: RealProse | None = None) -> list[Sample]:
    """One :class:`~benchmarks.tasks.Sample` per question of ``split``, in file order.

    The context is the whole document; ``target_tokens`` is its recorded token count; ``seed`` is the
    question's index within the selection (the accuracy/LongLLMLingua subsets take the first ones);
    ``sample_id`` is ``real_prose/<question id>``, the same in every split selection.
    """
    data = load_real_prose() if data is None else data
    samples = []
    for index, q in enumerate(data.select(split)):
        doc = data.documents[q.document]
        samples.append(
            Sample(
                task=TASK,
                target_tokens=doc.tokens,
                seed=index,
                instruction=INSTRUCTION,
                context=doc.text,
                question=f"Question: {q.question}",
                answer_prefix="",
                answers=q.answers,
                answer_spans=q.spans,
                documents=tuple(doc.text.split("\n\n")),
                name=q.id,
                split=doc.split,
                answer_positions=q.positions,
            )
        )
    return samples


# --- checks and maintenance -------------------------------------------------------------------------------
def check(data: RealProse) -> list[str]:
    """Every problem of the set (empty when it is sound).

    Checks: each answer occurs exactly once in its document and its recorded span and position match;
    answers are not given away by the question; one or two facts per question, two-fact answers in
    different places; recorded checksums and token counts; every document has questions and a split.
    """
    problems: list[str] = []
    for doc in data.documents.values():
        if doc.split not in SPLITS:
            problems.append(f"{doc.id}: split {doc.split!r} is not one of {SPLITS}")
        if hashlib.sha256(doc.text.encode()).hexdigest() != doc.sha256:
            problems.append(f"{doc.id}: sha256 does not match the text (run --refresh)")
        if not MIN_TOKENS <= doc.tokens <= MAX_TOKENS:
            problems.append(f"{doc.id}: {doc.tokens} tokens, outside {MIN_TOKENS}-{MAX_TOKENS}")
    asked = {q.document for q in data.questions}
    problems += [f"{d}: no question" for d in data.documents if d not in asked]
    ids = [q.id for q in data.questions]
    problems += [f"duplicate question id {i}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for q in data.questions:
        text = data.documents[q.document].text
        if q.facts not in (1, 2):
            problems.append(f"{q.id}: {q.facts} answers (1 or 2 expected)")
        if len(q.spans) != q.facts or len(q.positions) != q.facts:
            problems.append(f"{q.id}: spans/positions do not match the answers (run --refresh)")
            continue
        for answer, (s, e), where in zip(q.answers, q.spans, q.positions, strict=True):
            found = occurrences(text, answer)
            if len(found) != 1:
                problems.append(f"{q.id}: answer {answer!r} occurs {len(found)} times in {q.document}")
            if text[s:e] != answer:
                problems.append(f"{q.id}: span {s}-{e} does not hold {answer!r}")
            if where != position_of(s, len(text)):
                problems.append(f"{q.id}: position {where!r} of {answer!r} is wrong")
            if answer.casefold() in q.question.casefold():
                problems.append(f"{q.id}: the question gives away {answer!r}")
        if q.facts == 2 and len(set(q.spans)) == 2:
            (a, b), (c, d) = sorted(q.spans)
            if c < b + 80:
                problems.append(f"{q.id}: the two answers sit together ({a}-{b}, {c}-{d}); pick facts apart")
    return problems


def _imbalance(dev: set[str], docs: Sequence[str], counts: Mapping[str, tuple[int, int]]) -> tuple[int, ...]:
    """How unequal a dev/heldout assignment is: question count gap, two-fact gap, document count gap."""
    q = [sum(counts[d][0] for d in docs if (d in dev) == side) for side in (True, False)]
    two = [sum(counts[d][1] for d in docs if (d in dev) == side) for side in (True, False)]
    n = [sum(1 for d in docs if (d in dev) == side) for side in (True, False)]
    return abs(q[0] - q[1]), abs(two[0] - two[1]), abs(n[0] - n[1])


def propose_split(data: RealProse, fixed: Mapping[str, str] | None = None) -> dict[str, str]:
    """A deterministic, balanced document split: ``{document id: "dev" | "heldout"}``.

    Documents in ``fixed`` keep their half; over every assignment of the others in which each document kind
    (licence, man page, ...) is split as evenly as it can be, take the one with the smallest gaps in
    questions, two-fact questions and documents, ties broken by the sorted dev document ids. Used when
    documents are added (the recorded split of the older ones is ``fixed``); the recorded split is
    authoritative.
    """
    fixed = dict(fixed or {})
    docs = sorted(data.documents)
    counts = {d: (0, 0) for d in docs}
    for q in data.questions:
        n, two = counts[q.document]
        counts[q.document] = (n + 1, two + (q.facts == 2))
    kinds: dict[str, list[str]] = {}
    for d in docs:
        if d not in fixed:
            kinds.setdefault(data.documents[d].kind, []).append(d)
    choices = [
        [
            set(c)
            for size in sorted({len(group) // 2, len(group) - len(group) // 2})
            for c in itertools.combinations(group, size)
        ]
        for group in kinds.values()
    ]
    fixed_dev = {d for d, split in fixed.items() if split == "dev"}
    best: tuple[tuple[int, ...], list[str]] | None = None
    for combo in itertools.product(*choices):
        dev: set[str] = fixed_dev.union(*combo)
        key = (_imbalance(dev, docs, counts), sorted(dev))
        if best is None or key < best:
            best = key
    assert best is not None
    dev_ids = set(best[1])
    return {d: "dev" if d in dev_ids else "heldout" for d in docs}


def refresh(data_dir: Path = DATA_DIR, count_tokens: Callable[[str], int] | None = None) -> list[str]:
    """Recompute checksums, token counts (when ``count_tokens`` is given), answer spans and positions.

    Documents without a split get one from :func:`propose_split`, the recorded halves of the others fixed.
    Writes the JSON back and returns :func:`check`'s problems.
    """
    data = _read_json(data_dir)
    for d in data["documents"]:
        text = _text(data_dir, d["file"])
        d["chars"] = len(text)
        d["sha256"] = hashlib.sha256(text.encode()).hexdigest()
        if count_tokens is not None:
            d["tokens"] = count_tokens(text)
    texts = {d["id"]: _text(data_dir, d["file"]) for d in data["documents"]}
    for q in data["questions"]:
        text = texts[q["document"]]
        spans, positions = [], []
        for answer in q["answers"]:
            found = occurrences(text, answer)
            start = found[0] if found else -1
            spans.append([start, start + len(answer)])
            positions.append(position_of(max(start, 0), len(text)))
        q["spans"], q["positions"], q["facts"] = spans, positions, len(q["answers"])
    if not all(d.get("split") for d in data["documents"]):
        _write(data_dir, data)
        fixed = {d["id"]: d["split"] for d in data["documents"] if d.get("split")}
        split = propose_split(load_real_prose(data_dir), fixed)
        for d in data["documents"]:
            d["split"] = split[d["id"]]
    _write(data_dir, data)
    return check(load_real_prose(data_dir))


def _write(data_dir: Path, data: Mapping[str, Any]) -> None:
    text = json.dumps(data, indent=1, ensure_ascii=False)
    (data_dir / DATA_FILE).write_text(text + "\n", encoding="utf-8")


def summary(data: RealProse) -> str:
    """A few lines on the set: documents, questions and two-fact share per split, answer positions."""
    lines = [f"real_prose {data.fingerprint}: {len(data.documents)} documents, {len(data.questions)} questions"]
    for split in SPLITS:
        qs = data.select(split)
        docs = sorted({q.document for q in qs})
        two = sum(q.facts == 2 for q in qs)
        where = [p for q in qs for p in q.positions]
        spread = ", ".join(f"{p} {where.count(p)}" for p in POSITIONS)
        lines.append(f"  {split}: {len(docs)} documents, {len(qs)} questions ({two} two-fact); answers: {spread}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.real_prose [--refresh]``: check (and optionally rebuild) the data file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_prose", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="recompute spans, positions, checksums and token counts (loads the speculator), then check",
    )
    parser.add_argument("--speculator", default="smollm2-135m", help="token counter for --refresh")
    args = parser.parse_args(argv)
    if args.refresh:
        from specprefill.speculator.loading import load_speculator

        speculator = load_speculator(args.speculator)
        problems = refresh(DATA_DIR, lambda text: len(speculator.encode(text)[0]))
    else:
        problems = check(load_real_prose())
    print(summary(load_real_prose()))
    for problem in problems:
        print("problem:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
