"""Server-side SpecPrefill inside vLLM's OpenAI server."""
