"""LangChain's standard integration suite (langchain-tests 1.1.9) against ``specprefill serve``, every request pruned.

The deployment this package is designed for: a stock ``langchain_openai.ChatOpenAI`` (or ``ChatSpecPrefill`` in
server mode) talking to a vLLM server that prunes every prompt. Both run LangChain's own
``ChatModelIntegrationTests`` unchanged against ONE server (:func:`serving.suite_server`): SmolLM2-135M as base
and speculator, keep rate 0.5, every prompt scored however short, message contents prunable (the chat template
and its tools block protected), tool calls and structured output constrained by vLLM's guided decoding (the
Hermes tool parser with ``--tool-strict-level parameter``, JSON without free white space).

Every chat request of every test is recorded in the HTTP client and checked after the test
(:mod:`suite_tap`): answered with the server's stats, scored, not fallen back, pruned (unless its contents
are one token, which no keep rate can cut), and with every token of the tools block kept when it has tools.
A broken rule is an error of that test, also when the suite's own assertions are expected to fail.

Declared capabilities: tool calling, tool choice and structured output are on (guided decoding makes them
valid even on a 135M model); JSON mode too (vLLM's ``json_object``). Model override is off: the server serves
one model. Tests whose assertions need answers a 135M model cannot give are ``xfail(strict=True)`` with the
reason in :data:`XFAIL_REASONS`; each request is capped at :func:`max_tokens_for` tokens (a few for chat,
enough for a tool call or a small JSON object otherwise), so the two runs stay within a few minutes.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.register_assert_rewrite("serving", "suite_tap")  # before the imports, so their asserts are rewritten
from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from serving import ServerHandle  # noqa: E402
from suite_tap import ExchangeTap  # noqa: E402
from vllm_helpers import needs_vllm  # noqa: E402

pytestmark = [
    pytest.mark.vllm,
    needs_vllm,
    # the classes' asyncio mark (one event loop per class) also lands on the suite's sync tests, harmlessly
    pytest.mark.filterwarnings("ignore:.*is marked with '@pytest.mark.asyncio' but it is not an async function"),
]
pytest_plugins = ["serving", "suite_tap"]

MODEL = "smollm2-135m"

TOOL_TESTS = {
    "test_tool_calling",
    "test_tool_calling_async",
    "test_bind_runnables_as_tools",
    "test_tool_choice",
    "test_tool_calling_with_no_arguments",
    "test_structured_few_shot_examples",
    "test_agent_loop",
    "test_tool_message_histories_string_content",
    "test_tool_message_histories_list_content",
    "test_tool_message_error_status",
}
JSON_TESTS = {
    "test_structured_output",
    "test_structured_output_async",
    "test_structured_output_pydantic_2_v1",
    "test_structured_output_optional_param",
    "test_json_mode",
}


def max_tokens_for(test: str) -> int:
    """Generation cap of one standard test: a tool call with its arguments, a small JSON object, or a greeting."""
    if test == "test_unicode_tool_call_integration":
        return 96  # the CJK customer name costs a token per byte
    if test in TOOL_TESTS or test in JSON_TESTS:
        return 64
    return 6


MAGIC_INPUT = (
    "the call is valid (guided decoding), but SmolLM2-135M calls magic_function with input 100, and the suite "
    "asserts {'input': 3}"
)
XFAIL_REASONS = {
    "test_tool_calling": MAGIC_INPUT,
    "test_tool_calling_async": MAGIC_INPUT,
    "test_agent_loop": (
        "with tool_choice auto, SmolLM2-135M answers the weather question in text instead of calling get_weather; "
        "the suite asserts a tool call"
    ),
    "test_unicode_tool_call_integration": (
        "the forced calls are valid and the Chinese name is kept, but SmolLM2-135M names the Japanese customer "
        "'トラックバック' instead of 'こんにちは株式会社'"
    ),
    "test_json_mode": (
        "json_object mode leaves the keys free, and SmolLM2-135M nests and repeats keys until max_tokens cuts the "
        "object (LengthFinishReasonError); json_schema structured output passes"
    ),
}
"""Standard tests a 135M model cannot pass, by name, with the reason (applied as ``xfail(strict=True)``)."""


@pytest.mark.asyncio(loop_scope="class")
class _SuiteAgainstTheServer(ChatModelIntegrationTests):
    """The standard integration suite, configured for the suite server; subclasses name the client.

    One event loop per class: langchain-openai caches its async httpx client per base URL, and with a loop per
    test the second async test reuses connections of a closed loop ("Event loop is closed").
    """

    label = ""

    @pytest.fixture(autouse=True)
    def _against_the_suite_server(
        self, request: pytest.FixtureRequest, suite_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
    ) -> Any:
        name = request.node.originalname
        if name in XFAIL_REASONS:
            request.applymarker(pytest.mark.xfail(strict=True, reason=XFAIL_REASONS[name]))
        self.server = suite_server
        self.max_tokens = max_tokens_for(name)
        tap = ExchangeTap(suite_server.root_url, self.label)
        tap.install(monkeypatch)
        yield
        problems = tap.problems()
        assert not problems, "\n".join(problems)

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # the server serves one model


class TestChatOpenAIAgainstPruningServer(_SuiteAgainstTheServer):
    """Stock ``ChatOpenAI`` pointed at the pruning server: it reads no stats, the tap checks them."""

    label = "ChatOpenAI"

    @property
    def chat_model_class(self) -> type[Any]:
        from langchain_openai import ChatOpenAI

        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "base_url": self.server.base_url,
            "api_key": "EMPTY",
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "stream_usage": True,
            "max_retries": 0,
            "timeout": 300,
        }


class TestChatSpecPrefillServerMode(_SuiteAgainstTheServer):
    """``ChatSpecPrefill`` in server mode (``base_url``, no speculator): it requires and reports the stats."""

    label = "ChatSpecPrefill (server mode)"

    @property
    def chat_model_class(self) -> type[Any]:
        from langchain_specprefill import ChatSpecPrefill

        return ChatSpecPrefill

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": MODEL,
            "base_url": self.server.base_url,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "max_retries": 0,
            "timeout": 300,
        }


def test_a_tools_block_that_repeats_the_question_is_kept_whole(
    suite_server: ServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tool whose description is the user's question word for word: the server still keeps the whole block.

    The server finds each message content in vLLM's rendering; searching from the start, it took the tool
    description (rendered first) for the question, pruned the tools block and protected the question.
    """
    from langchain_openai import ChatOpenAI

    question = "Please greet my friend Ada from Oslo warmly"
    greet = {
        "type": "function",
        "function": {
            "name": "greet",
            "description": question,
            "parameters": {"type": "object", "properties": {}},
        },
    }
    tap = ExchangeTap(suite_server.root_url, "ChatOpenAI, a tool that repeats the question")
    tap.install(monkeypatch)
    chat = ChatOpenAI(model=MODEL, base_url=suite_server.base_url, api_key="EMPTY", temperature=0, max_tokens=32)
    message = chat.bind_tools([greet], tool_choice="greet").invoke(question)
    assert not tap.problems(), "\n".join(tap.problems())
    [stats] = tap.pruned()
    assert stats["pruned"] and [call["name"] for call in message.tool_calls] == ["greet"]
