"""ipywidgets panels for the notebooks: retrain the head on cached features, classify an uploaded photo. Each has
``.widget`` and a plain method doing what its button does (``train``, ``classify``), for CI and widget-less runs."""
from dataclasses import replace
from typing import Any

import ipywidgets as w
from IPython.display import display

from workshop_utils.core.errors import InvalidImageError
from workshop_utils.head import Options
from workshop_utils.plots import plot_prediction_probabilities, plot_training_curves
from workshop_utils.schedules import ExponentialLRDecay, PolynomialLRDecay
from workshop_utils.trainer import ImageClassificationTrainer

SCHEDULES = ("ExponentialLRDecay", "PolynomialLRDecay", "constant")


class RetrainPanel:
    """Epochs, batch size, learning rate and schedule controls that retrain the softmax head in seconds."""

    def __init__(self, train: Any, validation: Any, options: Any = None) -> None:
        self.train_bottlenecks, self.validation_bottlenecks = train, validation
        self.options = options if options is not None else Options()
        o, self.last = self.options, None  # last: the most recent TrainedClassifier
        self.epochs = w.IntSlider(value=o.epoch, min=1, max=max(200, o.epoch), description="epochs")
        self.batch_size = w.Dropdown(options=sorted({5, 10, 20, 32, 64, o.batch_size}), value=o.batch_size,
                                     description="batch size")
        own = getattr(o.learning_rate_scheduler, "initial_learning_rate", None)  # a schedule's own rate wins
        rate = own if own is not None else o.learning_rate
        self.learning_rate = w.FloatLogSlider(value=rate, base=10, min=-4, max=0, step=0.1,
                                              description="learning rate", readout_format=".4f")
        scheduler = o.learning_rate_scheduler
        self.schedule = w.Dropdown(options=SCHEDULES, description="schedule",
                                   value="constant" if scheduler is None else type(scheduler).__name__)
        self.button = w.Button(description="Train", button_style="primary", icon="play")
        self.output = w.Output()
        self.button.on_click(lambda _: self.train())
        controls = w.HBox([w.VBox([self.epochs, self.batch_size]), w.VBox([self.learning_rate, self.schedule]),
                           self.button])
        self.widget = w.VBox([controls, self.output])

    def current_options(self) -> Any:
        """The trainer options the controls describe now."""
        rate = float(self.learning_rate.value)
        scheduler = {"ExponentialLRDecay": ExponentialLRDecay, "PolynomialLRDecay": PolynomialLRDecay,
                     "constant": lambda: None}[self.schedule.value]()  # each starts at Options.learning_rate
        return replace(self.options, epoch=int(self.epochs.value), batch_size=int(self.batch_size.value),
                       learning_rate=rate, learning_rate_scheduler=scheduler, metrics_callback=None, progress=False)

    def train(self, **controls: Any) -> Any:
        """Set any of ``epochs``, ``batch_size``, ``learning_rate``, ``schedule``; retrain; show the curves."""
        for name, value in controls.items():
            if not hasattr(self, name) or not isinstance(getattr(self, name), w.ValueWidget):
                raise TypeError(f"RetrainPanel.train() got an unknown control {name!r}; use epochs, batch_size, "
                                "learning_rate or schedule.")
            getattr(self, name).value = value
        self.button.disabled = True
        try:
            trained = ImageClassificationTrainer(self.current_options()).fit_features(
                self.train_bottlenecks, self.validation_bottlenecks)
        finally:
            self.button.disabled = False
        self.last = trained
        with self.output:
            self.output.clear_output(wait=True)
            print(summary_line(trained))
            display(plot_training_curves(trained.history, trained.best_epoch))
        return trained

    def _ipython_display_(self) -> None:
        display(self.widget)


def summary_line(trained: Any) -> str:
    """One line: epochs run, best epoch and its validation (or training) accuracy."""
    history = trained.history
    dataset = "Validation" if (history["dataset"] == "Validation").any() else "Train"
    rows = history[(history["dataset"] == dataset) & (history["epoch"] == trained.best_epoch)]
    accuracy = float(rows["accuracy"].iloc[0]) if len(rows) else float("nan")
    stopped = ", stopped early" if trained.stopped_early else ""
    role = "the set that chose it" if dataset == "Validation" else "no validation set: training images"
    return (f"{int(history['epoch'].max()) + 1} epochs{stopped}; best epoch {trained.best_epoch}: "
            f"{dataset.lower()} accuracy {accuracy:.3f} ({role}; the test set is scored in 04)")


class UploadPanel:
    """A file-upload button that classifies the learner's own photo and charts the class probabilities."""

    def __init__(self, classifier: Any) -> None:
        self.classifier = classifier
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload a photo")
        self.output = w.Output()
        self.upload.observe(self._on_upload, names="value")
        self.widget = w.VBox([self.upload, self.output])

    def _on_upload(self, change: dict[str, Any]) -> None:
        for item in change["new"]:
            self.classify(bytes(item["content"]), name=item["name"])

    def classify(self, data: bytes, name: str = "upload") -> Any:
        """Classify encoded image bytes; show the photo and its probability chart (bad bytes: one line)."""
        with self.output:
            self.output.clear_output(wait=True)
            try:
                prediction = self.classifier.predict_bytes(data, name=name)
            except InvalidImageError as error:
                print(f"Could not classify {name}: {error}")
                return None
            display(w.Image(value=data, width=224))
            display(plot_prediction_probabilities(prediction, title=f"{name}: {prediction.label} "
                                                                    f"({prediction.probability:.0%})"))
        return prediction

    def _ipython_display_(self) -> None:
        display(self.widget)


retrain_panel, upload_panel = RetrainPanel, UploadPanel  # the notebooks' names
