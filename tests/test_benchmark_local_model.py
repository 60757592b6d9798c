"""Smoke test: the local-model benchmark runs end to end on a tiny open_clip architecture and
reports what BENCHMARKS.md quotes (both routes, the export check, the bottleneck, RSS).

No timing is asserted here (performance claims come from running the benchmark itself)."""
from __future__ import annotations

import json

import pytest

from benchmarks import local_model
from tests.conftest import in_ci

try:  # the test extra has both (open_clip for the provider, onnxruntime + onnx for this route)
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import open_clip  # noqa: F401
except ImportError as exc:  # a hidden gap in CI is a failure
    if in_ci():
        raise
    pytest.skip(f"the local-model benchmark needs the test extra: {exc}", allow_module_level=True)

TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "patch_size": 32,
                       "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 16, "heads": 2,
                     "layers": 1}}


@pytest.mark.slow
def test_benchmark_runs_both_routes_and_writes_json(tmp_path, capsys):
    config = tmp_path / "tiny-vit.json"
    config.write_text(json.dumps(TINY))
    out = tmp_path / "result.json"
    code = local_model.main(["--model-config", str(config), "--images", "2", "--repeats", "1",
                             "--batches", "2,1", "--cpu", "-1", "--cache", str(tmp_path / "c"),
                             "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["model"] == "tiny-vit" and result["machine"]["commit"]
    configs = result["configs"]
    assert set(configs) == {"preprocess", "export", "torch 1t", "onnxruntime 1t", "torch 2t",
                            "onnxruntime 2t"}
    assert configs["export"]["dim"] == 16
    assert set(configs["torch 1t"]["runs"]) == {"2", "1"}
    for name in ("onnxruntime 1t", "onnxruntime 2t"):
        ort = configs[name]
        assert ort["torch_loaded"] is False  # the ONNX worker's memory is its own
        assert ort["max_abs_vs_torch"] <= 1e-4
        assert ort["numpy_transform_max_abs_vs_torch_transform"] <= 1e-5
    for row in configs.values():
        assert len(row["loadavg_before"]) == 3 and row["peak_rss_mb"] > 0
    routes = result["summary"]["routes"]
    assert routes["torch 1t"]["bottleneck"] in ("embedding", "preprocessing")
    assert result["summary"]["preprocess_img_s_per_core"] > 0
    assert "| torch 1t | 1 | 2 |" in capsys.readouterr().out
