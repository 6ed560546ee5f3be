"""Widget panels do the same as their buttons through plain methods (what nbval and CI can run)."""
import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from workshop_utils.bottleneck import Bottlenecks
from workshop_utils.core.errors import InvalidImageError
from workshop_utils.core.scorer import Prediction
from workshop_utils.schedules import ExponentialLRDecay, PolynomialLRDecay
from workshop_utils.head import Options
from workshop_utils.apps.widgets import RetrainPanel, retrain_panel, summary_line, upload_panel


def _bottlenecks(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = (np.eye(3)[y] * 4 + rng.normal(0, 0.3, (n, 3))).astype(np.float32)
    return Bottlenecks(features=x, labels=[f"c{k}" for k in y], image_paths=[f"{i}.jpeg" for i in range(n)],
                       skipped=pd.DataFrame(columns=["path", "reason"]), from_cache=True, arch="MobilenetV2",
                       weights_id="random-init:seed0", image_size=(64, 64))


def test_retrain_panel_trains_with_the_controls_values(capsys):
    panel = retrain_panel(_bottlenecks(60, 0), _bottlenecks(15, 1), Options(epoch=5, arch="MobilenetV2"))
    assert isinstance(panel, RetrainPanel) and panel.epochs.value == 5
    trained = panel.train(epochs=7, batch_size=20, learning_rate=0.1, schedule="PolynomialLRDecay")
    assert panel.last is trained and trained.epochs_trained <= 7
    options = panel.current_options()
    assert isinstance(options.learning_rate_scheduler, PolynomialLRDecay) and options.batch_size == 20
    assert options.learning_rate == pytest.approx(0.1)
    assert float(options.learning_rate_scheduler.keras_schedule(3, options.learning_rate)(0)) == pytest.approx(0.1)
    assert "best epoch" in summary_line(trained) and "validation accuracy" in summary_line(trained)
    assert "(the set that chose it; the test set is scored in 04)" in summary_line(trained)
    assert summary_line(trained) in capsys.readouterr().out  # shown in the output area (stdout outside a kernel)
    panel.train(schedule="constant")
    assert panel.current_options().learning_rate_scheduler is None


def test_retrain_panel_defaults_to_mlnet_schedule_and_rejects_unknown_controls():
    panel = retrain_panel(_bottlenecks(30, 0), None, Options(epoch=3, early_stopping=None))
    assert isinstance(panel.current_options().learning_rate_scheduler, ExponentialLRDecay)
    with pytest.raises(TypeError, match=r"unknown control 'epoch'.*use epochs, batch_size"):
        panel.train(epoch=3)


class _FakeClassifier:
    def predict_bytes(self, data, name=None):
        if not data:
            raise InvalidImageError(f"{name}: the bytes are not a decodable JPEG/PNG/GIF/BMP image")
        return Prediction.from_scores([0.2, 0.8], ["dent", "scratch"], source=name)


def test_upload_panel_classifies_bytes_and_reports_bad_ones(capsys):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buffer, format="PNG")
    panel = upload_panel(_FakeClassifier())
    prediction = panel.classify(buffer.getvalue(), name="red.png")
    assert prediction.label == "scratch" and prediction.probability == pytest.approx(0.8)
    assert panel.classify(b"", name="empty.jpg") is None
    # an upload event goes through the same path
    panel._on_upload({"new": ({"name": "red.png", "content": memoryview(buffer.getvalue())},)})


def test_upload_panel_scores_a_phone_photo_upright_and_refuses_one_that_lies(capsys):
    """The panel scores through the Classifier, so the course's one orientation rule and data checks apply."""
    import keras

    import image_cases
    from workshop_utils.scoring import Classifier

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Flatten()(keras.layers.AveragePooling2D(8)(keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)))
    outputs = keras.layers.Dense(2, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(0, 0.3,
                                                                                                            seed=0))(x)
    panel = upload_panel(Classifier.from_model(keras.Model(inputs, outputs), ["dent", "scratch"]))
    photo = image_cases.asymmetric_photo()
    upright = panel.classify(image_cases.jpeg(photo), name="upright.jpg")
    turned = panel.classify(image_cases.jpeg(photo, 6), name="phone.jpg")
    assert turned.scores["dent"] == pytest.approx(upright.scores["dent"], abs=0.01)
    capsys.readouterr()
    assert panel.classify(image_cases.lying_jpeg(), name="lie.jpg") is None
    assert ("Could not classify lie.jpg: image 'lie.jpg': the bytes are not a decodable JPEG/PNG/GIF/BMP/WebP image "
            "(truncated or corrupt: the header declares 1000x30000 pixels") in capsys.readouterr().out
