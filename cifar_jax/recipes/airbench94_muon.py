"""airbench94_muon (Keller Jordan, KellerJordan/cifar10-airbench, `airbench94_muon.py`): 94.01%
mean test accuracy (n=200) in 2.59 s on an A100, in PyTorch; here through cifar_jax's public API.

    network     `AirbenchMuonNet` (`cifar_jax/models/airbench.py`): airbench94's network
                (`AirbenchNet`, 1,971,640 params) with the head's logits divided by its width (x 1/256, not x 1/9), the head's kernel
                rescaled to unit std at init, and the stem's bias drawn as PyTorch's Conv2d
                default, U(-1/sqrt(12), 1/sqrt(12)), not zero (the original builds the stem
                with a plain nn.Conv2d now). Stem from the first 5,000 training images, its
                filters frozen, its bias trained for the first 3 epochs only; BatchNorm momentum
                0.6 (weight of the old statistics), eps 1e-12, scale fixed at 1; exact GELU;
                widths 64, 256, 256; convolutions PyTorch-default then identity ("dirac").
    optimiser   `muon` (`cifar_jax/optim/muon.py`): Muon (momentum 0.6, lr 0.24) on the
                trained 4-D kernels; Nesterov SGD (momentum 0.85) with coupled decay on the rest: the stem bias and the
                BatchNorm biases at lr 0.053, the head at lr 0.67
    schedule    every lr falls linearly from full to zero over the run, the stem bias's over
                its first ceil(3 x 25) steps (both inside the optimiser: the run's --schedule
                is "constant"); no warm-up, no lookahead
    data        batch 2000, the last partial batch dropped, 8 epochs = ceil(8 x 25) = 200
                steps; alternating flip and 2-pixel reflect translation; 6-view test-time
                augmentation at the end
    loss        cross-entropy with label smoothing 0.2, summed over the batch

Run length: `--epochs E` is the original with 8 -> E, nothing else changed: total_steps =
ceil(E x steps per epoch), every lr decays to zero over them; the stem bias still trains for
ceil(3 x steps per epoch) steps, its lr falling to zero over those. So in a run shorter than
3 epochs it trains over the whole run and its lr stops short of zero (at E = 2, 50 steps: 26/75
of 0.053 at the last step), as the edited original would do; and the torch port
(`benchmarks/airbench_muon_torch.py`) does the same.

Where this port differs from the original, and why:
  * Newton-Schulz runs in the run's dtype: float32 by default, bfloat16 with --dtype bfloat16.
    The original always runs it in bfloat16 (on its half-precision network).
  * The whitening filters' signs are arbitrary in both (LAPACK's eigenvectors), and the data's
    order (so which 5,000 images) is TFDS's. Their order is the original's: ascending
    eigenvalue (airbench94's legacy code puts the largest first).
"""

from cifar_jax import ops, register_model, register_optimizer
from cifar_jax.models.airbench import AirbenchMuonNet
from cifar_jax.optim.muon import muon


def airbench94_muon(dtype):
    # The convolution is a speed kernel chosen for the backend (`ops.default_conv`); on the
    # CPU its 3x3 convolutions by Winograd's F(2x2, 3x3), 4/9 of the multiplies.
    return AirbenchMuonNet(dtype=dtype, conv=ops.default_conv(winograd=True))


register_optimizer("muon", muon)
register_model("airbench94_muon", airbench94_muon, optimizer="muon", epochs=8, batch_size=2000,
               drop_last=True, reduction="sum", augment="alternating_flip,translate", tta=2,
               settings={"loss.label_smoothing": 0.2})
