"""RULER-style synthetic long-context tasks over natural-text haystacks, generated offline and deterministically.

Tasks (after RULER, Hsieh et al. 2024):

* ``niah_single`` - one needle ("One of the special magic numbers for <key> is: <7 digits>.").
* ``niah_multikey`` - four needles with different keys; the question asks for one of them.
* ``niah_multivalue`` - four needles with the same key; the question asks for all four values.
* ``niah_multiquery`` - four needles with different keys; the question asks for two of them.
* ``variable_tracking`` - a chain ``VAR A = 12345. VAR B = VAR A. ...`` spread over the text, plus a distractor
  chain; the question asks which variables hold the chain's value.
* ``qa_multidoc`` - several documents, each stating the same kind of fact about a different entity; the
  question asks about one entity, so the answer is in one document and the others are distractors.
* ``niah_multianswer`` (beyond RULER) - five needles over four keys, one key with two values; the question
  asks for two keys, one of them the doubled key, so three answers in three places must all be kept.

The haystack comes from :mod:`benchmarks.corpus`. Every :class:`Sample` knows its gold answers and the
character spans of the context that hold them. Samples depend only on ``(task, target_tokens, seed)``, the
corpus and the token counter. Everything here is pure Python with no model.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.corpus import Corpus, TokenCounter, estimate_tokens
from specprefill.errors import ConfigurationError

__all__ = [
    "NEEDLE_TASKS",
    "RULER_TASKS",
    "TASKS",
    "RenderedPrompt",
    "Sample",
    "generate_sample",
    "generate_samples",
    "render_prompt",
]

Span = tuple[int, int]

RULER_TASKS: tuple[str, ...] = (
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "variable_tracking",
    "qa_multidoc",
)
"""The six RULER-style tasks (the "all six tasks" figures average over these)."""

TASKS: tuple[str, ...] = (*RULER_TASKS, "niah_multianswer")
"""All task names, in report order: the RULER six, then the harder multi-answer family."""

NEEDLE_TASKS: tuple[str, ...] = RULER_TASKS[:4]
"""The needle-in-a-haystack tasks (the headline retention numbers are averaged over these)."""

_KEY_ADJECTIVES = (
    "quiet", "amber", "hollow", "brisk", "gentle", "rusty", "silver", "crooked", "distant", "humble", "lively",
    "narrow", "patient", "restless", "sudden", "tidy", "velvet", "wandering", "wooden", "frosty",
)  # fmt: skip
_KEY_NOUNS = (
    "harbour", "lantern", "meadow", "orchard", "pebble", "quarry", "ribbon", "saddle", "thimble", "violin",
    "walnut", "beacon", "cottage", "drum", "falcon", "garden", "kettle", "ledger", "mirror", "pigeon",
)  # fmt: skip
_ENTITIES = (
    "Ashcombe", "Bramblewick", "Carrow", "Dunmere", "Elderford", "Fallowby", "Greyhaven", "Hollins", "Ivybridge",
    "Juniper Vale", "Kestrel Bay", "Larkmoor", "Millbrook", "Northcote", "Oakhurst", "Pennering", "Quenby",
    "Rosewater", "Saltmarsh", "Thornbury", "Upton Ferrers", "Westerly", "Yarrowby", "Zennor Cove",
)  # fmt: skip
_QA_TEMPLATES: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "The lighthouse on {e} Point was painted {a} in the spring.",
        "What colour was the lighthouse on {e} Point painted?",
        "The lighthouse on {e} Point was painted",
        ("crimson", "ochre", "teal", "violet", "saffron", "indigo", "scarlet", "olive", "cobalt", "maroon",
         "turquoise", "lavender"),
    ),
    (
        "The {e} choir rehearses every Thursday evening in the {a}.",
        "Where does the {e} choir rehearse?",
        "The {e} choir rehearses in the",
        ("old granary", "chapel crypt", "boathouse", "clock tower", "mill loft", "railway shed", "tithe barn",
         "glasshouse", "customs house", "ropewalk", "watermill", "signal box"),
    ),
    (
        "The {e} Trading Company was founded by {a}, a former ship's carpenter.",
        "Who founded the {e} Trading Company?",
        "The {e} Trading Company was founded by",
        ("Edda Marrow", "Tobias Wren", "Ilse Varga", "Caspar Holt", "Mirela Stone", "Anselm Brook",
         "Philippa Crane", "Lucan Ferris", "Odile Marsh", "Rufus Pell", "Sabine Dray", "Jonas Tallow"),
    ),
)  # fmt: skip

_INSTRUCTIONS = {
    "niah": "Some special magic numbers are hidden within the following text. Make sure to memorize them. "
    "I will quiz you about the numbers afterwards.",
    "variable_tracking": "Memorize and track the chain(s) of variable assignment hidden in the following text.",
    "qa_multidoc": "Answer the question based on the given documents. Only give the answer and do not output "
    "any other words.",
}


@dataclass(frozen=True)
class Sample:
    """One task instance: instruction, haystack context with its needles, question and gold answers."""

    task: str
    target_tokens: int
    seed: int
    instruction: str
    context: str
    question: str
    answer_prefix: str
    """Start of the answer, appended after the question (RULER style), so base models simply continue."""
    answers: tuple[str, ...]
    """Gold answer strings; a generation scores the fraction of them it contains."""
    answer_spans: tuple[Span, ...]
    """Character spans of ``context`` holding the gold information (values, or whole statements)."""
    documents: tuple[str, ...] = field(default_factory=tuple)
    """The context cut into documents/paragraphs (``context.split('\\n\\n')``), for document-level methods."""
    name: str = ""
    """A fixed set's own sample name (``real_prose``: the question id); empty for generated samples."""
    split: str = ""
    """A fixed set's half (``dev`` or ``heldout``); empty for generated samples."""
    answer_positions: tuple[str, ...] = ()
    """Where each answer span sits in the context (``start``/``middle``/``end``); empty when not labelled."""

    @property
    def sample_id(self) -> str:
        """Stable identifier: ``task/target_tokens/seed``, or ``task/name`` for a fixed set's sample."""
        if self.name:
            return f"{self.task}/{self.name}"
        return f"{self.task}/{self.target_tokens}/{self.seed}"


@dataclass(frozen=True)
class RenderedPrompt:
    """A sample laid out as one prompt string, with the positions that matter."""

    text: str
    context_span: Span
    """Where the context sits in ``text``."""
    gold_spans: tuple[Span, ...]
    """``Sample.answer_spans`` shifted into ``text``."""
    protected_spans: tuple[Span, ...]
    """Everything outside the context (template, instruction, question, answer prefix): never dropped."""


def render_prompt(sample: Sample, chat: Callable[[str], str] | None = None) -> RenderedPrompt:
    """Lay a sample out as a prompt: instruction, context, question, then the answer prefix.

    Args:
        sample: The sample.
        chat: Optional renderer of one user message with a chat template (ending with the assistant turn);
            the answer prefix is appended after it. Without it the prompt is plain text.

    Returns:
        The prompt text with the context, gold and protected character spans.

    """
    user = f"{sample.instruction}\n\n{sample.context}\n\n{sample.question}"
    if chat is None:
        text = f"{user}\nAnswer: {sample.answer_prefix}"
        start = len(sample.instruction) + 2
    else:
        rendered = chat(user)
        where = rendered.find(user)
        if where < 0:
            raise ConfigurationError("the chat renderer changed the message text; cannot locate the context")
        text = rendered + sample.answer_prefix
        start = where + len(sample.instruction) + 2
    end = start + len(sample.context)
    if text[start:end] != sample.context:  # pragma: no cover - guarded by construction
        raise ConfigurationError("internal error: context offset mismatch")
    gold = tuple((start + s, start + e) for s, e in sample.answer_spans)
    protected = tuple(s for s in ((0, start), (end, len(text))) if s[1] > s[0])
    return RenderedPrompt(text=text, context_span=(start, end), gold_spans=gold, protected_spans=protected)


# --- generation -------------------------------------------------------------------------------------------
@dataclass
class _Unit:
    text: str
    paragraph_end: bool
    needle: int | None = None
    """Index of the inserted needle (None for haystack sentences)."""
    gold: tuple[Span, ...] = ()
    """Gold spans relative to this unit's text."""


def _sentences(paragraph: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])", paragraph)
    return [p for p in parts if p]


def _haystack(corpus: Corpus, rng: random.Random, budget: int, count: TokenCounter) -> list[_Unit]:
    """Whole paragraphs in a seeded random order until ``budget`` tokens; the last one cut at a sentence."""
    order = list(range(len(corpus.paragraphs)))
    rng.shuffle(order)
    units: list[_Unit] = []
    used = 0
    cursor = 0
    while used < budget:
        if cursor == len(order):
            rng.shuffle(order)
            cursor = 0
        index = order[cursor]
        cursor += 1
        paragraph, tokens = corpus.paragraphs[index], corpus.tokens[index]
        if used + tokens <= budget:
            sentences = _sentences(paragraph)
            used += tokens
        else:
            sentences = []
            for sentence in _sentences(paragraph):
                cost = count(sentence) + 1
                if used + cost > budget:
                    break
                sentences.append(sentence)
                used += cost
            if not sentences:
                break
            used = budget
        units.extend(_Unit(s, paragraph_end=i == len(sentences) - 1) for i, s in enumerate(sentences))
    return units


def _insert(
    units: list[_Unit], needles: Sequence[tuple[str, tuple[Span, ...]]], rng: random.Random, *, ordered: bool = False
) -> None:
    """Insert needle sentences at random sentence boundaries (in the given order when ``ordered``)."""
    slots = (
        sorted(rng.sample(range(len(units) + 1), len(needles)))
        if len(units) + 1 >= len(needles)
        else [len(units)] * len(needles)
    )
    if not ordered:
        rng.shuffle(slots)
    placed = sorted(zip(slots, range(len(needles)), strict=True), reverse=True)
    for slot, index in placed:
        text, gold = needles[index]
        units.insert(slot, _Unit(text, paragraph_end=False, needle=index, gold=gold))


def _join(units: Sequence[_Unit]) -> tuple[str, dict[int, tuple[Span, ...]]]:
    pieces: list[str] = []
    spans: dict[int, tuple[Span, ...]] = {}
    pos = 0
    for i, unit in enumerate(units):
        if unit.needle is not None:
            spans[unit.needle] = tuple((pos + s, pos + e) for s, e in unit.gold)
        pieces.append(unit.text)
        pos += len(unit.text)
        if i + 1 < len(units):
            sep = "\n\n" if unit.paragraph_end else " "
            pieces.append(sep)
            pos += len(sep)
    return "".join(pieces), spans


def _key(rng: random.Random, taken: set[str]) -> str:
    while True:
        key = f"{rng.choice(_KEY_ADJECTIVES)}-{rng.choice(_KEY_NOUNS)}"
        if key not in taken:
            taken.add(key)
            return key


def _number(rng: random.Random, taken: set[str], digits: int = 7) -> str:
    while True:
        value = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
        if value not in taken:
            taken.add(value)
            return value


def _needle(key: str, value: str) -> tuple[str, tuple[Span, ...]]:
    text = f"One of the special magic numbers for {key} is: {value}."
    start = text.index(value, text.index(":"))
    return text, ((start, start + len(value)),)


def _multianswer(
    rng: random.Random, taken: set[str]
) -> tuple[list[tuple[str, tuple[Span, ...]]], list[int], list[str], str, str]:
    """Five needles over four keys, one key with two values; the question asks for two keys, one of them doubled.

    Returns ``(needles, gold needle indices, answers, question, answer prefix)``; the three answers are the
    doubled key's two values and the other asked key's value.
    """
    keys = [_key(rng, taken) for _ in range(4)]
    values = [_number(rng, taken) for _ in range(5)]
    owners = [0, 0, 1, 2, 3]  # keys[0] has two values
    needles = [_needle(keys[k], v) for k, v in zip(owners, values, strict=True)]
    gold_needles = [0, 1, 2]
    asked = [keys[0], keys[1]]
    rng.shuffle(asked)
    answers = [values[i] for i in gold_needles]
    pair = f"{asked[0]} and {asked[1]}"
    question = f"What are all the special magic numbers for {pair} mentioned in the provided text?"
    prefix = f"The special magic numbers for {pair} mentioned in the provided text are"
    return needles, gold_needles, answers, question, prefix


def _var_name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in taken:
            taken.add(name)
            return name


def generate_sample(
    task: str,
    target_tokens: int,
    seed: int,
    corpus: Corpus,
    *,
    count_tokens: TokenCounter = estimate_tokens,
) -> Sample:
    """Generate one sample whose prompt is about ``target_tokens`` long.

    Args:
        task: One of :data:`TASKS`.
        target_tokens: Length of the whole prompt (instruction + context + question) in tokens.
        seed: Sample seed; the same ``(task, target_tokens, seed)`` and corpus give the same sample.
        corpus: Haystack paragraphs (see :func:`benchmarks.corpus.load_corpus`).
        count_tokens: Token counter matching ``corpus`` (the one the corpus was built with).

    Returns:
        The sample.

    Raises:
        ConfigurationError: Unknown task or a length too short for the task.

    """
    if task not in TASKS:
        raise ConfigurationError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if target_tokens < 128:
        raise ConfigurationError(f"target_tokens must be at least 128, got {target_tokens}")
    rng = random.Random(f"{task}:{target_tokens}:{seed}")
    taken: set[str] = set()
    needles: list[tuple[str, tuple[Span, ...]]] = []
    gold_needles: list[int] = []
    answers: list[str] = []
    ordered = False
    if task == "niah_multianswer":
        instruction = _INSTRUCTIONS["niah"]
        needles, gold_needles, answers, question, prefix = _multianswer(rng, taken)
    elif task.startswith("niah"):
        instruction = _INSTRUCTIONS["niah"]
        n_keys = {"niah_single": 1, "niah_multikey": 4, "niah_multivalue": 1, "niah_multiquery": 4}[task]
        keys = [_key(rng, taken) for _ in range(n_keys)]
        if task == "niah_multivalue":
            values = [_number(rng, taken) for _ in range(4)]
            needles = [_needle(keys[0], v) for v in values]
            gold_needles, answers, asked = [0, 1, 2, 3], values, [keys[0]]
        else:
            values = [_number(rng, taken) for _ in keys]
            needles = [_needle(k, v) for k, v in zip(keys, values, strict=True)]
            n_asked = 2 if task == "niah_multiquery" else 1
            gold_needles = sorted(rng.sample(range(n_keys), n_asked))
            answers = [values[i] for i in gold_needles]
            asked = [keys[i] for i in gold_needles]
        if task == "niah_multivalue":
            question = f"What are all the special magic numbers for {asked[0]} mentioned in the provided text?"
            prefix = f"The special magic numbers for {asked[0]} mentioned in the provided text are"
        elif task == "niah_multiquery":
            question = (
                f"What are all the special magic numbers for {asked[0]} and {asked[1]} mentioned in the provided text?"
            )
            prefix = f"The special magic numbers for {asked[0]} and {asked[1]} mentioned in the provided text are"
        else:
            question = f"What is the special magic number for {asked[0]} mentioned in the provided text?"
            prefix = f"The special magic number for {asked[0]} mentioned in the provided text is"
    elif task == "variable_tracking":
        instruction = _INSTRUCTIONS["variable_tracking"]
        hops = 4
        value = _number(rng, taken, digits=5)
        distractor_value = _number(rng, taken, digits=5)
        chains: list[list[tuple[str, tuple[Span, ...]]]] = []
        names: list[list[str]] = []
        for first in (value, distractor_value):
            chain_names = [_var_name(rng, taken) for _ in range(hops)]
            statements = [f"VAR {chain_names[0]} = {first}."]
            statements += [f"VAR {chain_names[i]} = VAR {chain_names[i - 1]}." for i in range(1, hops)]
            chains.append([(s, ((0, len(s)),)) for s in statements])
            names.append(chain_names)
        # interleave the two chains, each in its own order
        merged: list[tuple[str, tuple[Span, ...]]] = []
        picks = [0] * hops + [1] * hops
        rng.shuffle(picks)
        cursor = [0, 0]
        for which in picks:
            merged.append(chains[which][cursor[which]])
            if which == 0:
                gold_needles.append(len(merged) - 1)
            cursor[which] += 1
        needles, ordered = merged, True
        answers = names[0]
        question = f"Question: Find all variables that are assigned the value {value} in the text above."
        prefix = (
            f"According to the chain(s) of variable assignment in the text above, {hops} variables are assigned "
            f"the value {value}, they are:"
        )
    else:
        return _qa_sample(task, target_tokens, seed, corpus, rng, count_tokens)
    overhead = count_tokens(instruction) + count_tokens(question) + count_tokens(prefix) + 8
    budget = target_tokens - overhead - sum(count_tokens(t) + 1 for t, _ in needles)
    units = _haystack(corpus, rng, max(budget, 16), count_tokens)
    _insert(units, needles, rng, ordered=ordered)
    context, spans = _join(units)
    gold = tuple(span for i in gold_needles for span in spans[i])
    return Sample(
        task=task,
        target_tokens=target_tokens,
        seed=seed,
        instruction=instruction,
        context=context,
        question=question,
        answer_prefix=prefix,
        answers=tuple(answers),
        answer_spans=gold,
        documents=tuple(context.split("\n\n")),
    )


def _qa_sample(
    task: str, target_tokens: int, seed: int, corpus: Corpus, rng: random.Random, count: TokenCounter
) -> Sample:
    fact, question_t, prefix_t, answer_pool = rng.choice(_QA_TEMPLATES)
    instruction = _INSTRUCTIONS["qa_multidoc"]
    n_docs = max(3, min(12, target_tokens // 300))
    entities = rng.sample(_ENTITIES, n_docs)
    answers = rng.sample(answer_pool, n_docs)
    gold_doc = rng.randrange(n_docs)
    question = "Question: " + question_t.format(e=entities[gold_doc])
    prefix = prefix_t.format(e=entities[gold_doc])
    overhead = count(instruction) + count(question) + count(prefix) + 8 + 8 * n_docs
    per_doc = max(24, (target_tokens - overhead) // n_docs)
    docs: list[str] = []
    gold: tuple[Span, ...] = ()
    for d in range(n_docs):
        fact_text = fact.format(e=entities[d], a=answers[d])
        start = fact_text.index(answers[d])
        fact_span = ((start, start + len(answers[d])),)
        units = _haystack(corpus, rng, max(per_doc - count(fact_text), 8), count)
        for unit in units:
            unit.paragraph_end = False  # paragraphs of one document are joined with single spaces
        _insert(units, [(fact_text, fact_span)], rng)
        header = f"Document {d + 1}:\n"
        body, spans = _join(units)
        if d == gold_doc:
            offset = sum(len(x) + 2 for x in docs) + len(header)
            gold = tuple((offset + s, offset + e) for s, e in spans[0])
        docs.append(header + body)
    context = "\n\n".join(docs)
    return Sample(
        task=task,
        target_tokens=target_tokens,
        seed=seed,
        instruction=instruction,
        context=context,
        question=question,
        answer_prefix=prefix,
        answers=(answers[gold_doc],),
        answer_spans=gold,
        documents=tuple(docs),
    )


def generate_samples(
    tasks: Sequence[str],
    lengths: Sequence[int],
    samples_per_cell: int,
    corpus: Corpus,
    *,
    seed: int = 0,
    count_tokens: TokenCounter = estimate_tokens,
) -> list[Sample]:
    """Samples for every task x length, ``samples_per_cell`` each, with seeds ``seed, seed+1, ...``."""
    return [
        generate_sample(task, length, seed + i, corpus, count_tokens=count_tokens)
        for task in tasks
        for length in lengths
        for i in range(samples_per_cell)
    ]
