"""Helper package for the car-damage transfer-learning workshop. The lesson's helpers sit at the top level
(config, data, quality, download, course, architectures, bottleneck, schedules, head, trainer, metrics, plots,
finetune, explain, export/, scoring); core/ holds what they share, backbones/ and interop/ other networks and
formats, apps/ (cli, widgets, serve) and tooling/ (sample, publish, bench) sit on top. Map: README.md,
"Inside workshop_utils". Importing the package itself is cheap: TensorFlow loads with the modules that need it.
"""
__version__ = "0.1.0"
