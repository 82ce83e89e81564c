"""LlamaIndex against ``specprefill serve``, every request pruned: a query engine and a function-calling step.

The counterpart of ``test_vllm_lc_suites.py`` for LlamaIndex, on the same suite server
(:func:`serving.suite_server`: keep rate 0.5, every prompt scored, message contents prunable, the tools block
protected, guided decoding for tool calls), with LlamaIndex's stock ``OpenAILike`` and ``SpecPrefillLLM`` in
server mode:

- a ``SummaryIndex`` query engine over four short documents with ``SpecPrefillNodePostprocessor`` scoring on
  the server (``base_url``): the nodes are pruned for the question, then the answer prompt is pruned again;
- a function-calling step through guided decoding: ``FunctionAgent`` with ``OpenAILike`` and a named
  ``initial_tool_choice`` (the tool returns directly, so one model call), and ``SpecPrefillLLM``, which is not a
  ``FunctionCallingLLM``, with the OpenAI ``tools`` / named ``tool_choice`` passed through its chat call.

Every chat request is recorded in the HTTP client and checked after each test (:mod:`suite_tap`): the server's
stats, scored and pruned, no fallback, the tools block kept whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.register_assert_rewrite("serving", "suite_tap")  # before the imports, so their asserts are rewritten
from serving import ServerHandle  # noqa: E402
from suite_tap import ExchangeTap  # noqa: E402
from vllm_helpers import needs_vllm  # noqa: E402

pytestmark = [pytest.mark.vllm, needs_vllm]
pytest_plugins = ["serving", "suite_tap"]

MODEL = "smollm2-135m"
DOCUMENTS = [
    "The saffron pear cake is baked for 48 minutes at 175 degrees, then rests for ten minutes before slicing.",
    "The Lanternfield stone bridge was completed in 1871 after six years of work by the river guild.",
    "The Ferrow Valley library board approved 42,000 euros for the roof repairs in its spring meeting.",
    "Quillmark's test floor opens at seven; its safety officer, Mira Tallis, signs every visitor in.",
]
QUESTION = "How long is the saffron pear cake baked, and at what temperature?"
CALLS: list[dict[str, Any]] = []


def get_weather(city: str) -> str:
    """Current weather of a city, in degrees Celsius."""
    CALLS.append({"city": city})
    return f"It is 21 degrees in {city}."


@pytest.fixture
def tap(request: pytest.FixtureRequest, suite_server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The chat exchanges of one test with the suite server, checked when it ends."""
    client = "SpecPrefillLLM" if "specprefill" in request.node.name.lower() else "OpenAILike"
    recorder = ExchangeTap(suite_server.root_url, f"LlamaIndex {client}")
    recorder.install(monkeypatch)
    CALLS.clear()
    yield recorder
    problems = recorder.problems()
    assert recorder.exchanges and not problems, "\n".join(problems) or "no chat request reached the server"


def openai_like(server: ServerHandle, max_tokens: int) -> Any:
    from llama_index.llms.openai_like import OpenAILike

    return OpenAILike(
        model=MODEL,
        api_base=server.base_url,
        api_key="EMPTY",
        is_chat_model=True,
        is_function_calling_model=True,
        context_window=4096,
        max_tokens=max_tokens,
        temperature=0,
        max_retries=0,
    )


def specprefill_llm(server: ServerHandle, max_tokens: int) -> Any:
    from llama_index.llms.specprefill import SpecPrefillLLM

    return SpecPrefillLLM(base_url=server.base_url, model=MODEL, max_new_tokens=max_tokens, max_retries=0)


LLMS: dict[str, Callable[[ServerHandle, int], Any]] = {"OpenAILike": openai_like, "SpecPrefillLLM": specprefill_llm}


@pytest.mark.parametrize("llm_name", sorted(LLMS))
async def test_query_engine_prunes_the_nodes_and_the_answer_prompt(
    llm_name: str, suite_server: ServerHandle, tap: ExchangeTap
) -> None:
    from llama_index.core import Document, SummaryIndex

    from llama_index.postprocessor.specprefill import METADATA_KEY, SpecPrefillNodePostprocessor
    from specprefill import SpecPrefillConfig

    postprocessor = SpecPrefillNodePostprocessor(
        base_url=suite_server.root_url, keep_rate=0.5, config=SpecPrefillConfig(lookahead=1, min_prompt_tokens=0)
    )
    index = SummaryIndex.from_documents([Document(text=t) for t in DOCUMENTS])
    engine = index.as_query_engine(
        llm=LLMS[llm_name](suite_server, 8), node_postprocessors=[postprocessor], response_mode="compact"
    )
    response = await engine.aquery(QUESTION)
    nodes = [n.node.metadata[METADATA_KEY] for n in response.source_nodes]
    assert nodes and all(s["tokens_kept"] <= s["tokens_in"] for s in nodes), nodes
    assert sum(s["tokens_kept"] for s in nodes) < sum(s["tokens_in"] for s in nodes), nodes
    assert str(response).strip()
    [stats] = tap.pruned()  # one answer prompt, pruned again by the server (checked by the tap)
    assert stats["tokens_kept"] < stats["tokens_in"]


async def test_function_agent_with_openai_like_calls_the_named_tool(
    suite_server: ServerHandle, tap: ExchangeTap
) -> None:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.tools import FunctionTool

    tool = FunctionTool.from_defaults(fn=get_weather, return_direct=True)
    agent = FunctionAgent(tools=[tool], llm=openai_like(suite_server, 48), initial_tool_choice="get_weather")
    output = await agent.run(user_msg="What is the weather in Oslo right now? Use the tool.")
    assert [call.tool_name for call in output.tool_calls] == ["get_weather"]
    assert len(CALLS) == 1 and isinstance(CALLS[0]["city"], str), CALLS
    assert str(output.response.content).startswith("It is 21 degrees in")
    [stats] = tap.pruned()
    kept = f"{stats['tokens_kept']}/{stats['tokens_in']}"
    print(f"\nFunctionAgent(OpenAILike): get_weather{CALLS[0]} on a pruned prompt ({kept} tokens kept)")


def test_specprefill_llm_passes_tools_and_a_named_tool_choice(suite_server: ServerHandle, tap: ExchangeTap) -> None:
    from llama_index.core.base.llms.types import ChatMessage
    from llama_index.core.tools import FunctionTool

    from llama_index.llms.specprefill import STATS_KEY

    tool = FunctionTool.from_defaults(fn=get_weather)
    llm = specprefill_llm(suite_server, 48)
    question = ChatMessage(role="user", content="What is the weather in Oslo right now? Use the tool.")
    response = llm.chat(
        [question],
        tools=[tool.metadata.to_openai_tool()],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    [call] = response.message.additional_kwargs["tool_calls"]
    assert call.function.name == "get_weather"
    output = tool.call(**json.loads(call.function.arguments))
    assert len(CALLS) == 1 and str(output).startswith("It is 21 degrees in")
    stats = response.additional_kwargs[STATS_KEY]
    assert stats == tap.pruned()[0]  # what the client reports is what the server sent
    kept = f"{stats['tokens_kept']}/{stats['tokens_in']}"
    print(f"\nSpecPrefillLLM: get_weather{CALLS[0]} on a pruned prompt ({kept} tokens kept)")
