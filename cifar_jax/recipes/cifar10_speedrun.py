"""cifar10_speedrun (hiverge/cifar10-speedrun, `cifar10_speedrun.py` at 5cd49b1): 94.01% mean test
accuracy in 2.015 s on an A100, in PyTorch, the CIFAR-10 record after airbench94_muon; here
through cifar_jax's public API, airbench94_muon's pieces with the speedrun's settings.

    network     `AirbenchMuonNet` with SiLU in the conv groups (GELU after the stem stays),
                BatchNorm momentum 0.5566 (the old statistics' weight), the stem's filters from
                an SVD of the patch covariance of the first 960 training images (largest first)
    optimiser   `muon`: Muon (lr 0.205, Nesterov momentum 0.655) on the filters, their updates
                orthogonalised as one zero-padded batch by 3 Newton-Schulz steps with
                (3.4576, -4.7391, 2.0843), eps 1e-5, after scaling to a target magnitude
                falling from 0.5012 to 0.0786; the filters renormalised to sqrt(out) when the
                steps since the last renormalisation reach 2 + int(15 x progress), and decayed
                after each update (p *= 1 - lr_t x 1.0418e-6 x batch); Nesterov SGD (momentum
                0.825, coupled decay 1.0418e-6 x batch) on the stem bias and BatchNorm biases
                (lr 0.0573) and the head (lr 0.5415)
    data        batch 1536, the last partial batch dropped, 7.59 epochs = ceil(7.59 x 32) =
                243 steps; alternating flip, 2-pixel reflect translation, colour jitter
                (brightness +-0.1399, contrast x(1 +- 0.1308), in the normalised space)
    loss        cross-entropy with label smoothing 0.09, summed over the batch
    evaluation  selective TTA (--tta 3): the six views, weighted alike, for the least confident
                quarter of the test images

How `--epochs E` scales the run: total_steps = ceil(E x 32); every learning rate falls linearly
to zero over it, and the target magnitude and the renormalisation cadence follow the same
progress (steps done / total_steps); the stem's bias trains for ceil(0.19 x 32) = 7 steps
whatever E is, its lr falling to zero over them, as in the original.

Where this port differs from the original: Newton-Schulz and the momentum run in the run's
dtype (the original: half precision on the GPU; `--optimizer.momentum_dtype bfloat16` keeps the
momentum in bfloat16); in float32 the target-magnitude scaling is undone by the normalisation
that follows it, up to eps (in half precision it changes the rounding); the data's order (and
so which 960 images whiten) is TFDS's; the whitening filters' signs are LAPACK's choice, as in
the original.
"""

from cifar_jax import ops, register_model
from cifar_jax.models.airbench import AirbenchMuonNet


def cifar10_speedrun(dtype):
    # The convolution is a speed kernel chosen for the backend (`ops.default_conv`); on the
    # CPU its 3x3 convolutions by Winograd's F(2x2, 3x3), 4/9 of the multiplies.
    return AirbenchMuonNet(dtype=dtype, conv=ops.default_conv(winograd=True))


register_model(
    "cifar10_speedrun", cifar10_speedrun, optimizer="muon", learning_rate=0.205, epochs=7.59,
    batch_size=1536, drop_last=True, reduction="sum",
    augment="alternating_flip,translate,colour_jitter", tta=3,
    settings={
        "model.activation": "silu", "model.batchnorm_momentum": 0.5566,
        "model.whiten_images": 960, "model.whiten_method": "svd",
        "optimizer.momentum": 0.655, "optimizer.weight_decay": 1.0418e-6,
        "optimizer.whiten_bias_epochs": 0.19, "optimizer.bias_lr": 0.0573,
        "optimizer.head_lr": 0.5415, "optimizer.sgd_momentum": 0.825,
        "optimizer.ns_batched": True, "optimizer.ns_coefficients": (3.4576, -4.7391, 2.0843),
        "optimizer.ns_eps": 1e-5, "optimizer.target_magnitude": (0.5012, 0.0786),
        "optimizer.renorm_every": 2, "optimizer.renorm_growth": 15.0,
        "optimizer.renorm_eps": 1e-7, "optimizer.filter_decay": 1.0418e-6,
        "augment.colour_jitter.brightness": 0.1399, "augment.colour_jitter.contrast": 0.1308,
        "loss.label_smoothing": 0.09,
    })
