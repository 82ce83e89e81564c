"""LangChain's standard chat model suites (langchain-tests 1.1.9) against ChatSpecPrefill.

Unit suite: hermetic (construction, standard params, structured-output wiring); nothing loads a model.
Integration suite: the real embedded default in process, SmolLM2-135M-Instruct as speculator and as base
model (one shared copy of the weights), with short generations to keep the run time reasonable.

Capabilities declared to the suites, and why:

- ``has_tool_calling = False``: ``bind_tools`` raises ``NotImplementedError`` (no base path has a tool
  channel), so every tool test is skipped by the suite itself.
- Structured output (unit suite: on; real-model suite: off): ``with_structured_output`` works by
  putting the schema into the protected system prompt. A 135M model does not reliably write JSON that
  matches a schema, so the real-model suite declares structured output off and the suite's own
  structured-output tests run in ``TestStructuredOutputOverScriptedBase``: the real adapter, parsers and
  callbacks over a scripted base that answers with a fixed JSON joke (they fail if that wiring breaks).
- ``supports_model_override = False``: in process, one instance is one base model (a per-call ``model=``
  only works against an OpenAI-compatible server, tested separately).
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from lc_support import lc_engine  # noqa: F401 - fixture

from conftest import needs_model
from fakes import fake_engine
from langchain_specprefill import ChatSpecPrefill

MAX_TOKENS = 10
"""Generation length in the integration suite: enough for a greeting, short enough for a CPU run."""

JOKE_JSON = '{"setup":"Why_do_cats_sit_on_keyboards?","punchline":"To_keep_an_eye_on_the_mouse."}'
"""The scripted base's answer in the structured-output tests (no spaces: it streams as one piece)."""


def _json_model() -> ChatSpecPrefill:
    """The adapter over the letter speculator and a scripted base that answers :data:`JOKE_JSON`."""
    return ChatSpecPrefill(engine=fake_engine(JOKE_JSON))


class TestChatSpecPrefillUnit(ChatModelUnitTests):
    """Standard unit tests: construction is instant and loads nothing."""

    @property
    def chat_model_class(self) -> type[ChatSpecPrefill]:
        return ChatSpecPrefill

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "smollm2-135m", "speculator": "smollm2-135m", "keep_rate": 0.3}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


@needs_model
class TestChatSpecPrefillIntegration(ChatModelIntegrationTests):
    """Standard integration tests on the real embedded model, in process."""

    @pytest.fixture(autouse=True)
    def _shared_engine(self, request: pytest.FixtureRequest) -> None:
        self.engine = request.getfixturevalue("lc_engine")

    @property
    def chat_model_class(self) -> type[ChatSpecPrefill]:
        return ChatSpecPrefill

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": self.engine, "max_tokens": MAX_TOKENS, "temperature": 0}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        # The 135M model does not write schema-valid JSON reliably; the same standard tests run over a
        # scripted JSON base in TestStructuredOutputOverScriptedBase.
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False


class _ScriptedJsonSuite(ChatModelIntegrationTests):
    """The standard integration tests, configured for :func:`_json_model` (not collected by itself)."""

    @property
    def chat_model_class(self) -> type[ChatSpecPrefill]:
        return ChatSpecPrefill

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"engine": fake_engine(JOKE_JSON)}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return True


class TestStructuredOutputOverScriptedBase:
    """LangChain's own structured-output tests, unchanged, over the real adapter and a scripted JSON base.

    They fail if the schema binding, the parsers, streaming or the ``ls_structured_output_format`` callback
    wiring break; only the model's answer is scripted.
    """

    suite = _ScriptedJsonSuite()

    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, schema_type: Any) -> None:
        self.suite.test_structured_output(_json_model(), schema_type)

    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, schema_type: Any) -> None:
        await self.suite.test_structured_output_async(_json_model(), schema_type)

    def test_structured_output_pydantic_2_v1(self) -> None:
        self.suite.test_structured_output_pydantic_2_v1(_json_model())

    def test_structured_output_optional_param(self) -> None:
        self.suite.test_structured_output_optional_param(_json_model())

    def test_json_mode(self) -> None:
        self.suite.test_json_mode(_json_model())
