"""The evaluation speed-ups change no output: LeNet-5's pooling without autograd, and
accuracy in batches of 500."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pcm_hil.models import accuracy, load_model, max_pool2
from pcm_hil.store_job.baselines import quantized
from pcm_hil.store_job.inputs import NetworkConfig, load_inputs


def test_max_pool2_without_autograd_is_max_pool2d() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in ((3, 4, 28, 28), (2, 5, 10, 10), (2, 3, 7, 9), (1, 1, 2, 2)):
        x = torch.randn(shape, generator=g)
        x[x < 0] = 0  # ties, as after a ReLU
        with torch.no_grad():
            assert torch.equal(max_pool2(x), F.max_pool2d(x, 2)), shape
        assert torch.equal(max_pool2(x), F.max_pool2d(x, 2))  # with autograd: max_pool2d itself


def test_lenet5_outputs_are_the_same_with_and_without_autograd_and_in_any_batch() -> None:
    inputs = load_inputs(NetworkConfig("lenet5-fmnist"))
    x = torch.from_numpy(inputs.val.x[:2000])
    for net in (load_model("lenet5-fmnist").eval(), quantized(inputs.network, inputs.names, 3, 0.85)[0].eval()):
        with_grad = net(x).detach()
        with torch.no_grad():
            assert torch.equal(net(x), with_grad)
            assert torch.equal(torch.cat([net(x[i:i + 500]) for i in range(0, 2000, 500)]), with_grad)
        assert accuracy(net, inputs.val.x[:2000], inputs.val.y[:2000], batch=500) == \
            accuracy(net, inputs.val.x[:2000], inputs.val.y[:2000], batch=2000)
