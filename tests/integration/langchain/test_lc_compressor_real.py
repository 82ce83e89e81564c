"""SpecPrefillDocumentCompressor with the real embedded speculator (hermetic tests: tests/unit/langchain)."""

from __future__ import annotations

from typing import Any

from langchain_core.documents import Document
from lc_support import DOCUMENTS

from conftest import needs_model
from langchain_specprefill import SpecPrefillDocumentCompressor


# --- the real speculator -----------------------------------------------------------------------------------
@needs_model
async def test_real_speculator_prunes_for_the_question(speculator: Any) -> None:
    files = ["lanternfield_history.txt", "brightwell_kettle_faq.txt"]
    inputs = [
        Document(page_content=(DOCUMENTS / f).read_text(encoding="utf-8"), metadata={"source": f}, id=f) for f in files
    ]
    c = SpecPrefillDocumentCompressor(speculator=speculator, keep_rate=0.25, min_tokens_per_document=32)
    question = "In which year was the stone bridge in Lanternfield completed?"
    out = c.compress_documents(inputs, question)
    assert [d.id for d in out] == files
    stats = [d.metadata["specprefill"] for d in out]
    assert all(s["pruned"] and 32 <= s["tokens_kept"] < s["tokens_in"] for s in stats)
    total_in = sum(s["tokens_in"] for s in stats)
    total_kept = sum(s["tokens_kept"] for s in stats)
    assert 0.2 < total_kept / total_in < 0.45  # keep_rate of the document tokens, plus the per-document minimum
    assert stats[0]["speculator_seconds"] > 0 and stats[0]["prompt_tokens_in"] > total_in
    assert all(len(d.page_content) < len(i.page_content) for d, i in zip(out, inputs, strict=True))
    again = await c.acompress_documents(inputs, question)
    assert [d.page_content for d in again] == [d.page_content for d in out]
