"""The benchmark harness runs end to end on tiny settings and writes a well-formed result (no timing asserted)."""
import json

from workshop_utils.tooling import bench
from workshop_utils.tooling.bench import cases

KEYS = {"pipeline_vs_raw", "cache_speedup", "head_train_seconds", "head_train_vs_sklearn", "naive_vs_cached_speedup",
        "naive_accuracy", "cached_accuracy", "rss_growth_explained", "machine"}


def test_harness_writes_a_well_formed_result(tmp_path):
    settings = cases.BenchSettings(arch="MobilenetV2", weights=None, image_size=(64, 64), images=24, batch_size=8,
                                   head_samples=60, head_features=32, head_classes=3, head_epochs=3,
                                   naive_epochs=4, naive_epochs_run=1, memory_probe=True)
    result = bench.run_benchmark(settings, tmp_path)
    saved = json.loads((tmp_path / result["path"].split("/")[-1]).read_text())
    assert KEYS <= set(saved), KEYS - set(saved)
    for key in ("pipeline_vs_raw", "cache_speedup", "head_train_seconds", "naive_vs_cached_speedup"):
        assert isinstance(saved[key], float) and saved[key] > 0
    assert 0 <= saved["naive_accuracy"] <= 1 and 0 <= saved["cached_accuracy"] <= 1
    assert isinstance(saved["rss_growth_explained"], bool) and len(saved["rss"]) == 2
    assert saved["naive_extrapolated"] is True and saved["machine"]["cores"] >= 1
    table = bench.markdown_table(result)
    assert table.count("\n| ") >= 6 and "MobilenetV2" in table


def test_structured_features_have_class_structure():
    x, y = cases.structured_features(90, 16, 3)
    assert x.shape == (90, 16) and x.dtype == "float32" and set(y) == {0, 1, 2}
