"""The packaged model itself: the dense copy holds the GGUF values exactly; the default load picks the device dtype."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import needs_model


@needs_model
@pytest.mark.integration
def test_dense_copy_holds_the_gguf_values_exactly() -> None:
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    from specprefill.speculator.embedded import embedded_gguf_path
    from specprefill.speculator.loading import resolve_model_dir

    reader = gguf.GGUFReader(embedded_gguf_path("smollm2-135m"))
    wanted = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
    }
    with safe_open(str(Path(resolve_model_dir("smollm2-135m")) / "model.safetensors"), "pt") as stored:
        for tensor in reader.tensors:
            if tensor.name in wanted:
                expected = torch.from_numpy(np.array(gguf.dequantize(tensor.data, tensor.tensor_type)))
                got = stored.get_tensor(wanted[tensor.name])
                assert got.dtype in (torch.float16, torch.float32)
                assert torch.equal(got.to(torch.float32), expected.reshape(got.shape)), tensor.name


@needs_model
@pytest.mark.integration
def test_load_speculator_default_dtype_is_the_device_default() -> None:
    from specprefill.speculator.embedded import DEFAULT_SPECULATOR
    from specprefill.speculator.hf import HFSpeculator
    from specprefill.speculator.loading import default_dtype, load_speculator

    spec = load_speculator()
    assert isinstance(spec, HFSpeculator)
    assert spec.name == DEFAULT_SPECULATOR
    assert next(spec.model.parameters()).dtype is default_dtype("cpu")
