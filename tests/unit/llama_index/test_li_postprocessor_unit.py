"""SpecPrefillNodePostprocessor, hermetic: a character-level fake speculator, no model, no sockets."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.schema import ImageNode, MetadataMode, NodeWithScore, QueryBundle, TextNode

from fakes import FakeSpeculator, hot_word_speculator, role_tags
from llama_index.postprocessor.specprefill import (
    METADATA_KEY,
    SpecPrefillNodePostprocessor,
    SpecPrefillPruneEndEvent,
    SpecPrefillPruneStartEvent,
)
from specprefill import SpecPrefillConfig
from specprefill.errors import ConfigurationError, ModelLoadError, PromptError

FILLER = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "


def _node(i: int, text: str, score: float, **metadata: Any) -> NodeWithScore:
    node = TextNode(id_=f"node-{i}", text=text, metadata={"source": f"doc{i}.txt", **metadata})
    return NodeWithScore(node=node, score=score)


def _nodes() -> list[NodeWithScore]:
    return [
        _node(0, FILLER * 3 + "The ANSWER is forty-two. " + FILLER * 3, 0.9),
        _node(1, FILLER * 6, 0.8),
        _node(2, FILLER * 6, 0.7),
    ]


def _pp(**kwargs: Any) -> SpecPrefillNodePostprocessor:
    kwargs.setdefault("config", SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8))
    return SpecPrefillNodePostprocessor(kwargs.pop("speculator", hot_word_speculator()), **kwargs)


def test_one_output_per_input_with_identity_scores_and_metadata() -> None:
    nodes = _nodes()
    before = [(n.node.node_id, n.score, dict(n.node.metadata), n.node.get_content()) for n in nodes]
    out = _pp(keep_rate=0.25, drop_empty_nodes=False).postprocess_nodes(nodes, query_str="What is the answer?")
    assert [n.node.node_id for n in out] == ["node-0", "node-1", "node-2"]
    assert [n.score for n in out] == [0.9, 0.8, 0.7]
    for o, (_, _, meta, _) in zip(out, before, strict=True):
        assert {k: v for k, v in o.node.metadata.items() if k != METADATA_KEY} == meta
        assert METADATA_KEY in o.node.excluded_llm_metadata_keys
        assert METADATA_KEY in o.node.excluded_embed_metadata_keys
        assert METADATA_KEY not in o.node.get_content(metadata_mode=MetadataMode.LLM)
        assert METADATA_KEY not in o.node.get_content(metadata_mode=MetadataMode.EMBED)
    assert "ANSWER" in out[0].node.get_content()
    assert len(out[0].node.get_content()) < len(before[0][3])
    # the inputs are untouched: same text, no stats key
    assert [(n.node.node_id, n.score, dict(n.node.metadata), n.node.get_content()) for n in nodes] == before


def test_text_is_cut_to_kept_spans_with_gap_marker() -> None:
    out = _pp(
        keep_rate=0.1, config=SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8, gap_marker=" [...] ")
    ).postprocess_nodes(_nodes(), query_str="answer?")
    text = out[0].node.get_content()
    assert "[...]" in text
    original = _nodes()[0].node.get_content()
    for piece in text.split("[...]"):
        assert piece.strip() in original


def test_budget_goes_where_the_query_points() -> None:
    """The hot words sit in the first node; the recency ramp would favour the last. The budget follows the words."""
    out = _pp(max_kept_tokens=16).postprocess_nodes(_nodes(), query_str="answer?")
    assert [n.node.node_id for n in out] == ["node-0"]
    stats = out[0].node.metadata[METADATA_KEY]
    assert stats["tokens_kept"] < stats["tokens_in"]
    assert stats["context_tokens_kept"] == stats["tokens_kept"]


def test_dropped_nodes_are_removed_or_kept_empty() -> None:
    removed = _pp(max_kept_tokens=16).postprocess_nodes(_nodes(), query_str="answer?")
    kept = _pp(max_kept_tokens=16, drop_empty_nodes=False).postprocess_nodes(_nodes(), query_str="answer?")
    assert len(removed) == 1
    assert [n.node.node_id for n in kept] == ["node-0", "node-1", "node-2"]
    assert kept[1].node.get_content() == ""
    assert kept[1].node.metadata[METADATA_KEY]["dropped"] is True
    assert kept[0].node.metadata[METADATA_KEY]["dropped"] is False


@pytest.mark.parametrize("budget", [1, 7, 8, 9, 40, 100])
def test_max_kept_tokens_is_met_exactly(budget: int) -> None:
    pp = _pp(max_kept_tokens=budget, drop_empty_nodes=False)
    out = pp.postprocess_nodes(_nodes(), query_str="answer?")
    stats = [n.node.metadata[METADATA_KEY] for n in out]
    assert pp.effective_config.keep_rate == 1.0  # the token budget alone decides
    kept = sum(s["tokens_kept"] - s["protected_tokens"] for s in stats)
    assert kept == budget
    # one character per token: the kept text without gap markers has exactly that many characters
    marker = pp.config.gap_marker
    assert sum(len(n.node.get_content().replace(marker.strip(), "").replace(" ", "")) for n in out) <= budget


def test_protected_metadata_values_stay_and_do_not_use_the_budget() -> None:
    nodes = _nodes()
    nodes[2] = _node(2, FILLER * 2 + "Harbour Almanac " + FILLER * 3, 0.7, title="Harbour Almanac")
    out = _pp(max_kept_tokens=10, protected_metadata_keys=["title", "missing"]).postprocess_nodes(
        nodes, query_str="answer?"
    )
    by_id = {n.node.node_id: n for n in out}
    assert "Harbour Almanac" in by_id["node-2"].node.get_content()
    s = by_id["node-2"].node.metadata[METADATA_KEY]
    assert s["protected_tokens"] == len("Harbour Almanac")
    total = sum(
        n.node.metadata[METADATA_KEY]["tokens_kept"] - n.node.metadata[METADATA_KEY]["protected_tokens"] for n in out
    )
    assert total == 10


def test_min_tokens_per_node_keeps_every_node() -> None:
    out = _pp(max_kept_tokens=16, min_tokens_per_node=12).postprocess_nodes(_nodes(), query_str="answer?")
    assert [n.node.node_id for n in out] == ["node-0", "node-1", "node-2"]
    for n in out:
        s = n.node.metadata[METADATA_KEY]
        assert s["tokens_kept"] >= 12
        assert n.node.get_content().strip()
    assert out[1].node.metadata[METADATA_KEY]["minimum_tokens_added"] >= 12


def test_query_and_metadata_are_scored_but_never_output() -> None:
    spec = hot_word_speculator()
    out = _pp(speculator=spec, keep_rate=0.2).postprocess_nodes(_nodes(), query_str="Which ANSWER is it?")
    assert len(spec.scored) == 1
    prompt = spec.scored[0]
    assert "Question: Which ANSWER is it?" in prompt
    assert "source: doc1.txt" in prompt  # LLM-visible metadata is shown to the speculator
    assert prompt.index("[1]") < prompt.index("[2]") < prompt.index("[3]") < prompt.index("Question:")
    assert all("Question" not in n.node.get_content() for n in out)
    spec2 = hot_word_speculator()
    _pp(speculator=spec2, include_metadata=False).postprocess_nodes(_nodes(), query_str="q")
    assert "source:" not in spec2.scored[0]


def test_without_a_query_the_passages_alone_are_scored() -> None:
    spec = hot_word_speculator()
    out = _pp(speculator=spec, keep_rate=0.3).postprocess_nodes(_nodes())
    assert "Question:" not in spec.scored[0]
    assert out and out[0].node.node_id == "node-0"


def test_short_prompts_pass_through_unchanged() -> None:
    nodes = _nodes()
    pp = _pp(keep_rate=0.1, config=SpecPrefillConfig(min_prompt_tokens=100_000))
    out = pp.postprocess_nodes(nodes, query_str="q")
    assert [n.node.get_content() for n in out] == [n.node.get_content() for n in nodes]
    stats = out[0].node.metadata[METADATA_KEY]
    assert stats["pruned"] is False and stats["fallback"] is False
    assert stats["tokens_kept"] == stats["tokens_in"] > 0


def test_nodes_without_text_pass_through_and_empty_list() -> None:
    image = NodeWithScore(node=ImageNode(id_="img", image="aGVsbG8=", text=""), score=0.5)
    nodes = [*_nodes(), image]
    out = _pp(keep_rate=0.05).postprocess_nodes(nodes, query_str="answer?")
    assert out[-1] is image
    assert _pp().postprocess_nodes([], query_str="q") == []
    only = _pp().postprocess_nodes([image], query_str="q")
    assert only[0] is image


def test_speculator_failure_falls_back_to_unpruned_nodes(caplog: pytest.LogCaptureFixture) -> None:
    nodes = _nodes()
    with caplog.at_level(logging.WARNING):
        out = _pp(speculator=hot_word_speculator(fail=True), keep_rate=0.1).postprocess_nodes(nodes, query_str="q")
    assert [n.node.get_content() for n in out] == [n.node.get_content() for n in nodes]
    assert out[0].node.metadata[METADATA_KEY]["fallback"] is True
    strict = SpecPrefillConfig(min_prompt_tokens=0, fallback_on_error=False)
    with pytest.raises(Exception, match="scripted speculator failure"):
        _pp(speculator=hot_word_speculator(fail=True), config=strict).postprocess_nodes(nodes, query_str="q")


def test_construction_is_lazy_and_loading_happens_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import specprefill.speculator.loading

    calls: list[str] = []

    def fake_load(name: str, **kwargs: Any) -> FakeSpeculator:
        calls.append(name)
        return hot_word_speculator()

    monkeypatch.setattr(specprefill.speculator.loading, "load_speculator", fake_load)
    pp = SpecPrefillNodePostprocessor(
        "some-speculator", keep_rate=0.2, config=SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8)
    )
    assert calls == []
    assert pp.speculator_name == "some-speculator"
    pp.postprocess_nodes(_nodes(), query_str="answer?")
    pp.postprocess_nodes(_nodes(), query_str="answer?")
    assert calls == ["some-speculator"]


def test_unloadable_speculator_falls_back_or_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    import specprefill.speculator.loading

    def broken(name: str, **kwargs: Any) -> FakeSpeculator:
        raise ModelLoadError(f"no model called {name!r}")

    monkeypatch.setattr(specprefill.speculator.loading, "load_speculator", broken)
    out = SpecPrefillNodePostprocessor("missing", config=SpecPrefillConfig(min_prompt_tokens=0)).postprocess_nodes(
        _nodes(), query_str="q"
    )
    assert len(out) == 3 and out[0].node.metadata[METADATA_KEY]["fallback"] is True
    strict = SpecPrefillConfig(min_prompt_tokens=0, fallback_on_error=False)
    with pytest.raises(ModelLoadError, match="missing"):
        SpecPrefillNodePostprocessor("missing", config=strict).postprocess_nodes(_nodes(), query_str="q")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_rate": 0.0},
        {"keep_rate": 1.5},
        {"max_kept_tokens": 0},
        {"min_tokens_per_node": -1},
        {"speculator": 42},
    ],
)
def test_invalid_settings_raise_configuration_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        SpecPrefillNodePostprocessor(**kwargs)


def test_protected_tokens_can_count_toward_the_budget() -> None:
    """Headers, the question and the instruction use up the budget when the config says so (core honours it)."""
    free = _pp(keep_rate=0.5).postprocess_nodes(_nodes(), query_str="What is the answer?")
    config = SpecPrefillConfig(min_prompt_tokens=0, chunk_size=8, protected_count_toward_budget=True)
    counted = _pp(keep_rate=0.5, config=config).postprocess_nodes(_nodes(), query_str="What is the answer?")
    kept = [sum(len(n.node.get_content()) for n in out) for out in (free, counted)]
    assert kept[1] < kept[0]


def test_effective_config_combines_budgets() -> None:
    assert SpecPrefillNodePostprocessor(keep_rate=0.2).effective_config.keep_rate == 0.2
    both = SpecPrefillNodePostprocessor(keep_rate=0.2, max_kept_tokens=50).effective_config
    assert (both.keep_rate, both.max_kept_tokens) == (0.2, 50)
    default = SpecPrefillNodePostprocessor().effective_config
    assert default.keep_rate == SpecPrefillConfig().keep_rate
    assert default.protect_question_tokens == 0 and default.protect_system_tokens is None


def test_serialises_without_the_speculator() -> None:
    pp = _pp(keep_rate=0.2, protected_metadata_keys=["title"])
    data = pp.to_dict()
    assert data["class_name"] == "SpecPrefillNodePostprocessor"
    assert data["speculator_name"] == "char-fake"
    assert data["keep_rate"] == 0.2 and data["protected_metadata_keys"] == ["title"]


class _Collect(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Collect"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def collected() -> Any:
    handler = _Collect(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        yield handler.events
    finally:
        root.event_handlers.remove(handler)


def test_instrumentation_events_and_callback_payload(collected: list[BaseEvent]) -> None:
    debug = LlamaDebugHandler()
    pp = _pp(keep_rate=0.25, callback_manager=CallbackManager([debug]))
    out = pp.postprocess_nodes(_nodes(), query_str="answer?")
    starts = [e for e in collected if isinstance(e, SpecPrefillPruneStartEvent)]
    ends = [e for e in collected if isinstance(e, SpecPrefillPruneEndEvent)]
    assert len(starts) == len(ends) == 1
    assert starts[0].query == "answer?" and starts[0].model_name == "char-fake" and starts[0].keep_rate == 0.25
    assert len(starts[0].nodes) == 3
    assert ends[0].nodes == out
    stats = ends[0].stats
    assert stats["nodes_in"] == 3 and stats["nodes_out"] == len(out)
    assert stats["context_tokens_kept"] < stats["context_tokens_in"]
    assert stats["prompt"]["speculator"] == "char-fake"
    assert [s["node_id"] for s in stats["nodes"]] == ["node-0", "node-1", "node-2"]
    assert starts[0].span_id is not None and starts[0].span_id == ends[0].span_id
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    end_payload = pairs[0][1].payload
    assert end_payload is not None
    assert end_payload["additional_kwargs"][METADATA_KEY]["nodes_out"] == len(out)


def test_async_matches_sync(collected: list[BaseEvent]) -> None:
    pp = _pp(keep_rate=0.25, drop_empty_nodes=False)
    sync = pp.postprocess_nodes(_nodes(), query_str="answer?")
    result = asyncio.run(pp.apostprocess_nodes(_nodes(), query_bundle=QueryBundle("answer?")))
    assert [(n.node.node_id, n.score, n.node.get_content()) for n in result] == [
        (n.node.node_id, n.score, n.node.get_content()) for n in sync
    ]
    assert sum(isinstance(e, SpecPrefillPruneEndEvent) for e in collected) == 2
    assert asyncio.run(pp.apostprocess_nodes([], query_str="q")) == []


def _upper_case_template() -> FakeSpeculator:
    spec = hot_word_speculator()
    spec.template = lambda messages: role_tags([{**m, "content": str(m["content"]).upper()} for m in messages])
    return spec


def test_a_template_that_changes_contents_is_refused() -> None:
    with pytest.raises(PromptError, match="changes the passages text"):
        _pp(speculator=_upper_case_template()).postprocess_nodes(_nodes(), query_str="q")
