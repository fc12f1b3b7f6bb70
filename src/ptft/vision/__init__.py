"""Vision track of the PT->FT pipeline: datasets (CIFAR-100, SVHN, a synthetic stand-in and handwritten
digits in their file formats) and ResNet-18 builders with named stages.

Submodules (imported explicitly; ``models``/``data`` import torchvision, which takes seconds):
``ptft.vision.data`` (DataConfig, load_task, normalize), ``ptft.vision.synthetic`` (``ptft-data``),
``ptft.vision.digits``, ``ptft.vision.models`` (build_model), ``ptft.vision.task`` (the trainer Task),
``ptft.vision.track`` (what the pipeline calls). The knobs live in ``ptft.pipeline.knobs``.
"""
