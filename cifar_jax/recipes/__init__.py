"""cifar_jax's own recipes, registered through the public API exactly as a user's would be:
one module per recipe, its model, optimiser and settings side by side. A new recipe is one
more module here (and its import below); no other module of the package changes.

Here too: the parts every recipe may name, the augmentations of `cifar_jax.augment` and the
cross-entropy loss.
"""

from cifar_jax import augment, register_augmentation, register_loss, steps

register_augmentation("flip", augment.random_flip)
register_augmentation("alternating_flip", augment.alternating_flip)
register_augmentation("translate", augment.random_translate)
register_augmentation("cutout", augment.cutout)
register_augmentation("colour_jitter", augment.colour_jitter)
register_loss("cross_entropy", steps.cross_entropy)

from cifar_jax.recipes import (  # noqa: F401, I001 - they name the parts above
    tutorial, airbench94, airbench94_muon, cifar10_speedrun)
