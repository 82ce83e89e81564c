"""Task generator: deterministic, gold spans hold the answers, lengths near the target, no model needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.corpus import DOCUMENTS_DIR, Corpus, estimate_tokens, load_corpus
from benchmarks.tasks import NEEDLE_TASKS, RULER_TASKS, TASKS, generate_sample, generate_samples, render_prompt
from specprefill.errors import ConfigurationError


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus()


def test_corpus_uses_project_documents_and_stdlib(corpus: Corpus) -> None:
    assert corpus.sources == ("documents", "stdlib")
    assert DOCUMENTS_DIR.is_dir() and "documents/*.txt" in corpus.description
    assert corpus.total_tokens > 12_000  # enough for 8k-token haystacks without much repetition
    assert all(p.strip() == p and "\n" not in p for p in corpus.paragraphs)
    assert len(corpus.fingerprint) == 16
    assert load_corpus().fingerprint == corpus.fingerprint


def test_corpus_sources_can_be_chosen(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Title\n\n" + "A sentence about the harbour and its keeper. " * 4 + "\n")
    only_docs = load_corpus(["documents"], documents_dir=tmp_path)
    assert only_docs.sources == ("documents",) and len(only_docs.paragraphs) == 1
    only_stdlib = load_corpus(["stdlib"])
    assert only_stdlib.sources == ("stdlib",) and len(only_stdlib.paragraphs) > 100
    with pytest.raises(ConfigurationError, match="unknown haystack source"):
        load_corpus(["wikipedia"])
    with pytest.raises(ConfigurationError, match=r"needs \.txt files"):
        load_corpus(["documents"], documents_dir=tmp_path / "missing")


def test_documents_source_does_not_depend_on_the_working_directory(
    corpus: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_corpus().fingerprint == corpus.fingerprint


def test_task_families() -> None:
    assert TASKS[: len(RULER_TASKS)] == RULER_TASKS and len(RULER_TASKS) == 6
    assert set(NEEDLE_TASKS) < set(RULER_TASKS) and "niah_multianswer" in TASKS


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [512, 2048, 8192])
def test_gold_spans_hold_the_answers(corpus: Corpus, task: str, length: int) -> None:
    sample = generate_sample(task, length, 3, corpus)
    assert sample.answers and sample.answer_spans
    gold_text = [sample.context[s:e] for s, e in sample.answer_spans]
    for answer in sample.answers:
        assert any(answer in g for g in gold_text), (answer, gold_text)
    prompt = render_prompt(sample)
    assert [prompt.text[s:e] for s, e in prompt.gold_spans] == gold_text
    total = estimate_tokens(prompt.text)
    assert 0.85 * length <= total <= 1.1 * length, (task, length, total)


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_and_seed_dependent(corpus: Corpus, task: str) -> None:
    a = generate_sample(task, 1024, 0, corpus)
    assert a == generate_sample(task, 1024, 0, corpus)
    assert a.context != generate_sample(task, 1024, 1, corpus).context
    assert a.sample_id == f"{task}/1024/0"


def test_needles_are_unique_and_keys_match_question(corpus: Corpus) -> None:
    sample = generate_sample("niah_multikey", 2048, 5, corpus)
    needles = re.findall(r"special magic numbers for ([\w-]+) is: (\d{7})", sample.context)
    assert len(needles) == 4 and len({k for k, _ in needles}) == 4
    asked = dict(needles)
    key = re.search(r"number for ([\w-]+) mentioned", sample.question)
    assert key and asked[key.group(1)] == sample.answers[0]
    multi = generate_sample("niah_multivalue", 2048, 5, corpus)
    assert len(multi.answers) == 4 and len(set(multi.answers)) == 4
    query = generate_sample("niah_multiquery", 2048, 5, corpus)
    assert len(query.answers) == 2 and len(query.answer_spans) == 2


@pytest.mark.parametrize("seed", range(4))
def test_multianswer_asks_two_keys_one_with_two_values(corpus: Corpus, seed: int) -> None:
    sample = generate_sample("niah_multianswer", 1024, seed, corpus)
    needles = re.findall(r"special magic numbers for ([\w-]+) is: (\d{7})", sample.context)
    assert len(needles) == 5
    by_key: dict[str, list[str]] = {}
    for key, value in needles:
        by_key.setdefault(key, []).append(value)
    assert sorted(len(v) for v in by_key.values()) == [1, 1, 1, 2]
    asked = re.findall(r"([a-z]+-[a-z]+)", sample.question)
    assert len(asked) == 2 and sorted(len(by_key[k]) for k in asked) == [1, 2]
    assert sorted(sample.answers) == sorted(v for k in asked for v in by_key[k])
    assert [sample.context[s:e] for s, e in sample.answer_spans] == list(sample.answers)


def test_variable_tracking_chain_is_in_order(corpus: Corpus) -> None:
    sample = generate_sample("variable_tracking", 2048, 2, corpus)
    statements = [sample.context[s:e] for s, e in sample.answer_spans]
    assert len(statements) == 4
    assert re.fullmatch(r"VAR [A-Z]{5} = \d{5}\.", statements[0])
    for prev, cur, name in zip(statements, statements[1:], sample.answers[1:], strict=False):
        assert cur == f"VAR {name} = VAR {prev.split()[1]}."
    assert [s for s, _ in sample.answer_spans] == sorted(s for s, _ in sample.answer_spans)
    assert sample.context.count("VAR ") == 2 * (1 + 3 * 2)  # two chains of four statements


def test_qa_answer_in_exactly_one_document(corpus: Corpus) -> None:
    sample = generate_sample("qa_multidoc", 4096, 1, corpus)
    assert len(sample.documents) >= 3
    assert sample.context == "\n\n".join(sample.documents)
    entity = re.search(r"(?:on|the) ([A-Z][\w ]+?) (?:Point|choir|Trading)", sample.question)
    assert entity is not None
    holders = [d for d in sample.documents if entity.group(1) in d]
    assert len(holders) == 1 and sample.answers[0] in holders[0]
    ((start, _end),) = sample.answer_spans
    assert sample.context.rfind("Document", 0, start) == sample.context.find(holders[0][:12])


def test_render_with_chat_template_protects_everything_but_the_context(corpus: Corpus) -> None:
    sample = generate_sample("niah_single", 512, 0, corpus)

    def chat(user: str) -> str:
        return f"<|user|>\n{user}<|end|>\n<|assistant|>\n"

    prompt = render_prompt(sample, chat)
    s, e = prompt.context_span
    assert prompt.text[s:e] == sample.context
    assert prompt.text.endswith(sample.answer_prefix)
    assert prompt.protected_spans == ((0, s), (e, len(prompt.text)))
    with pytest.raises(ConfigurationError, match="chat renderer"):
        render_prompt(sample, lambda user: user.upper())


def test_errors_and_bulk_generation(corpus: Corpus) -> None:
    with pytest.raises(ConfigurationError, match="unknown task"):
        generate_sample("summarise", 1024, 0, corpus)
    with pytest.raises(ConfigurationError, match="at least 128"):
        generate_sample("niah_single", 64, 0, corpus)
    samples = generate_samples(NEEDLE_TASKS[:2], [512, 1024], 2, corpus, seed=7)
    assert [(s.task, s.target_tokens, s.seed) for s in samples][:3] == [
        ("niah_single", 512, 7),
        ("niah_single", 512, 8),
        ("niah_single", 1024, 7),
    ]
    assert len(samples) == 8
