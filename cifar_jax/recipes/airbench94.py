"""airbench94 (Keller Jordan, KellerJordan/cifar10-airbench, `legacy/airbench94.py`): 94.01% mean
test accuracy in 3.83 s on an A100, in PyTorch; here part for part in JAX.

    network     `AirbenchNet`: whitening stem from the first 5,000 training images (frozen;
                its bias trains 3 epochs), 3 conv groups with BatchNorm and GELU, 1.97 M params
    optimiser   `nesterov` (`cifar_jax/optim/nesterov.py`): Nesterov SGD, coupled weight
                decay, BatchNorm biases 64x
    schedule    linear warm-up from 0.2x over 23% of the steps, then linear decay to 0.07x;
                lookahead every 5 steps
    data        batch 1024, the last partial batch dropped, 9.9 epochs; alternating flip and
                2-pixel reflect translation; 6-view test-time augmentation at the end
    loss        cross-entropy with label smoothing 0.2, summed over the batch
"""

from cifar_jax import ops, register_model, register_optimizer
from cifar_jax.models.airbench import AirbenchNet
from cifar_jax.optim.nesterov import nesterov


def airbench94(dtype):
    # The convolution is a speed kernel chosen for the backend (`ops.default_conv`); on the
    # CPU its 3x3 convolutions by Winograd's F(2x2, 3x3), 4/9 of the multiplies.
    return AirbenchNet(dtype=dtype, conv=ops.default_conv(winograd=True))


register_optimizer("nesterov", nesterov)
register_model("airbench94", airbench94, optimizer="nesterov", epochs=9.9, batch_size=1024,
               drop_last=True, reduction="sum", schedule="warmup_decay", lookahead=True,
               augment="alternating_flip,translate", tta=2,
               settings={"loss.label_smoothing": 0.2})
