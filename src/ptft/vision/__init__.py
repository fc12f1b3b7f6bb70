"""Deep-network track: datasets (CIFAR-100, SVHN, a synthetic stand-in in their file formats),
ResNet-18 builders and per-layer initialisation scaling.

Submodules (imported explicitly; ``models``/``data`` import torchvision, which takes seconds):
``ptft.vision.data`` (DataConfig, load_task, normalize), ``ptft.vision.synthetic`` (``ptft-data``),
``ptft.vision.models`` (build_model, new_head), ``ptft.vision.scaling`` (InitConfig, FTConfig,
apply_init_scaling, prepare_finetune_model).
"""
