"""The two protocols end to end on the bundled sample: honest (choose on validation, report on test) and mlnet."""
from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from workshop_utils import course
from workshop_utils.apps.cli import main
from workshop_utils.metrics import evaluate
from workshop_utils.trainer import ImageClassificationTrainer

# `run --dataset sample --protocol mlnet` before the honest protocol existed (seed 0, EfficientNet-Lite0, quick profile).
MLNET_VALIDATION_IMAGES = [18, 21, 27, 33, 44, 45, 46, 49, 53, 61, 62, 67, 75, 89, 92, 93, 98, 99, 108, 113, 121,
                           126, 128, 129, 132, 135, 137, 138, 140, 141, 148, 151, 155, 164, 172, 173, 175, 181, 184,
                           186, 192, 196, 200, 222, 223, 225, 227, 239]
MLNET_BEST_EPOCH = 19
MLNET_CONFUSION = [[4, 0, 0, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0, 0, 5],
                   [0, 0, 0, 4, 0, 0, 0, 1], [0, 0, 0, 0, 4, 0, 0, 0], [0, 0, 0, 0, 0, 4, 0, 0],
                   [0, 0, 0, 0, 0, 0, 4, 0], [0, 0, 0, 0, 0, 0, 0, 18]]
MLNET_METRICS = dict(micro_accuracy=0.8541666666666666, macro_accuracy=0.8291666666666666,
                     log_loss=0.4060692171968623, log_loss_reduction=0.7822604017511656)
MLNET_PER_CLASS_LOG_LOSS = [0.619555186, 0.974279743, 1.228030445, 0.363774404, 0.0639842, 0.068597159,
                            0.091345312, 0.222638949]


def _number(path: str) -> int:
    return int(Path(path).stem)


def test_mlnet_protocol_reproduces_the_labs_run(tmp_path):
    """Same split membership, chosen epoch and confusion counts as before; metrics within 1e-6."""
    keras.utils.set_random_seed(0)
    plan = course.plan_run("quick", "sample", workspace=tmp_path, protocol="mlnet", progress=False)
    assert sorted(_number(p) for p in plan.validation["image_path"]) == MLNET_VALIDATION_IMAGES
    assert len(plan.train) == 192 and plan.test.empty
    trained = ImageClassificationTrainer(plan.options).fit(plan.train, plan.validation)
    assert trained.best_epoch == MLNET_BEST_EPOCH
    validation = trained.validation_bottlenecks
    metrics = evaluate(validation.labels, trained.predict_proba(validation.features), trained.label_map,
                       subset="validation")
    assert metrics.confusion_matrix.tolist() == MLNET_CONFUSION
    for name, value in MLNET_METRICS.items():
        assert getattr(metrics, name) == pytest.approx(value, abs=1e-6), name
    np.testing.assert_allclose(metrics.per_class_log_loss, MLNET_PER_CLASS_LOG_LOSS, atol=1e-6)
    assert str(metrics).splitlines()[1] == "*    Metrics on the validation set (chose the epoch)"


def test_run_reports_on_the_test_set_and_stops_on_the_carved_validation_set(tmp_path, capsys):
    assert main(["run", "--dataset", "sample", "--workspace", str(tmp_path), "--epochs", "15"]) == 0
    out = capsys.readouterr().out
    counts = re.search(r"protocol honest: (\d+) train, (\d+) validation \(chooses the epoch\), (\d+) test \(reported, "
                       r"never used for choosing\)", out)
    assert counts and tuple(map(int, counts.groups())) == (163, 29, 48), out[:2000]
    # early stopping watched the carved validation part: ML.NET's per-epoch validation lines count its 29 images
    # as one batch, and the chosen epoch is reported with that set's scores
    assert re.search(r"best epoch \d+.*; chosen on the validation set \(validation accuracy [\d.]+, log-loss", out)
    assert "*    Metrics on the test set (never used for choosing)" in out
    assert "Evaluated rows = 48" in out
    card = (tmp_path / "model" / "model_card.json").read_text(encoding="utf-8")
    assert '"protocol": "honest"' in card and '"subset": "test"' in card
    assert (tmp_path / "duplicates.csv").is_file()
