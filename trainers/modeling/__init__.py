"""Models: the registry, pretrained weights, and cutting a backbone for the caches.

    models        `REGISTRY` and `build_model` (preprocessing and augmentation inside)
    weights       ImageNet weights: the file each backbone needs, checked before loading
    cutting       a transfer model split at its pooling or its fine-tuning cut
    keras_compat  fixes Keras 3 needs here (nested inference mode, multi-worker fit)
"""

__all__ = ["cutting", "keras_compat", "models", "weights"]
