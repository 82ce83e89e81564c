"""specprefill in one page: prune a long prompt with the speculator, then generate with the base model.

Runs offline on the embedded SmolLM2-135M-Instruct (speculator and base). From the repository root:

    make venv
    .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

from pathlib import Path

from specprefill import SpecPrefillConfig, load_engine

DOCUMENTS = Path(__file__).parent / "documents"


def main() -> None:
    document = (DOCUMENTS / "lanternfield_history.txt").read_text(encoding="utf-8")
    question = "In which year was the stone bridge in Lanternfield completed?"
    messages = [
        {"role": "system", "content": "Answer briefly from the document."},
        {"role": "user", "content": f"{document}\n\nQuestion: {question}"},
    ]

    # 1. The engine: a small speculator scores every prompt token, a base model answers. Here both are the
    #    packaged embedded model, so its weights load once (offline, ~5 s) and are shared.
    config = SpecPrefillConfig(keep_rate=0.3, protect_question_tokens=24)
    engine = load_engine("smollm2-135m", config=config)

    # 2. Pruning only: which 32-token chunks survive, and what that cost.
    pruned = engine.prune(messages)
    s = pruned.stats
    print(
        f"pruned {s.tokens_in} -> {s.tokens_kept} tokens (keep ratio {s.keep_ratio:.2f}) "
        f"in {s.speculator_seconds:.2f} s; kept positions start {pruned.kept_indices[:5].tolist()}"
    )

    # 3. End to end: the base model prefills only the kept tokens, at their original positions.
    result = engine.generate(messages, max_new_tokens=32, temperature=0.0)
    print("answer:", result.text.strip())
    st = result.stats
    print(
        f"tokens in {st.tokens_in}, kept {st.tokens_kept} ({st.keep_ratio:.2f}); speculator "
        f"{st.speculator_seconds:.2f} s, base prefill {st.base_prefill_seconds:.2f} s, "
        f"total {st.total_seconds:.2f} s; positions: {st.positions}"
    )

    # 4. Streaming: text arrives in pieces; the last chunk carries the full result.
    for chunk in engine.stream(messages, max_new_tokens=24, keep_rate=0.5):
        print(chunk.text, end="", flush=True)
        if chunk.result is not None:
            print(f"\n(streamed with keep ratio {chunk.result.stats.keep_ratio:.2f})")


if __name__ == "__main__":
    main()
