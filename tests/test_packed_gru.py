"""packed_gru: nn.GRU's maths over packed sequences, with a hand-written backward."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fop_modules.packed_gru import _nn_gru, _PackedGRU, packed_gru


def _case(lengths, hidden=5, features=3, dtype=torch.float64):
    torch.manual_seed(0)
    gru = nn.GRU(features, hidden, batch_first=True).to(dtype)
    lengths = torch.tensor(lengths)
    x = torch.randn(len(lengths), int(lengths.max()), features, dtype=dtype, requires_grad=True)
    h0 = torch.randn(1, len(lengths), hidden, dtype=dtype, requires_grad=True)
    return gru, pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=True), x, h0


@pytest.mark.parametrize("lengths", [[6, 4, 4, 1], [3, 3, 3], [1]])
def test_equals_nn_gru_with_its_gradients(lengths):
    gru, packed, x, h0 = _case(lengths)
    ours = packed_gru(packed.data, h0[0], gru, packed.batch_sizes.tolist())
    theirs = gru(packed, h0)[0].data
    torch.testing.assert_close(ours, theirs)
    weights = torch.randn_like(ours)  # a loss that weighs every output differently
    inputs = [x, h0, *gru.parameters()]
    for a, b in zip(torch.autograd.grad((ours * weights).sum(), inputs, retain_graph=True),
                    torch.autograd.grad((theirs * weights).sum(), inputs), strict=True):
        torch.testing.assert_close(a, b)


def test_backward_passes_gradcheck():
    """Every input's gradient against finite differences (float64), weights and biases included."""
    gru, packed, _, h0 = _case([4, 2, 2, 1], hidden=3, features=2)
    sizes = packed.batch_sizes.tolist()
    inputs = [t.detach().clone().requires_grad_() for t in (packed.data, h0[0], *gru.parameters())]
    assert torch.autograd.gradcheck(lambda *args: _PackedGRU.apply(*args, sizes), inputs)


def test_cpu_autocast_rounds_only_the_products_over_all_steps():
    """Under CPU autocast (trainer.precision=bf16-mixed) the input projection and the input and
    weight gradients are bfloat16 products, as nn.GRU's under autocast; the recurrence, the
    outputs and the gradients stay float32 and close to the float32 run."""
    gru, packed, _, h0 = _case([4, 2], dtype=torch.float32)
    sizes = packed.batch_sizes.tolist()
    results = []
    for autocast in (False, True):
        gru.zero_grad()
        data = packed.data.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = packed_gru(data, h0[0], gru, sizes)
            out.square().sum().backward()
        results.append([out, data.grad, *(p.grad for p in gru.parameters())])
    for exact, rounded in zip(*results):
        assert rounded.dtype == torch.float32
        assert not torch.equal(exact, rounded)  # the products were rounded ...
        torch.testing.assert_close(rounded, exact, atol=3e-2, rtol=3e-2)  # ... to bfloat16 only


@pytest.mark.parametrize("sizes", [[2, 3], [3, 1], [2, 2]])
def test_bad_batch_sizes_are_named(sizes):
    gru = nn.GRU(3, 4)
    with pytest.raises(ValueError, match="batch_sizes"):
        packed_gru(torch.randn(5, 3), torch.zeros(sizes[0] if sizes != [2, 3] else 2, 4), gru, sizes)


def test_only_one_layer_unidirectional_grus():
    with pytest.raises(ValueError, match="one-layer"):
        packed_gru(torch.randn(2, 3), torch.zeros(2, 4), nn.GRU(3, 4, num_layers=2), [2])


def test_the_gpu_path_computes_the_same():
    """On CUDA, packed_gru hands the packed batch to nn.GRU (cuDNN): the same values and
    gradients (checked here on CPU, where nn.GRU runs the packed batch too)."""
    gru, packed, _, h0 = _case([5, 3, 3, 1])
    data, sizes = packed.data.detach().requires_grad_(), packed.batch_sizes.tolist()
    a, b = packed_gru(data, h0[0], gru, sizes), _nn_gru(data, h0[0], gru, sizes)
    torch.testing.assert_close(a, b)
    inputs = [data, h0, *gru.parameters()]
    for u, v in zip(torch.autograd.grad(a.sum(), inputs), torch.autograd.grad(b.sum(), inputs), strict=True):
        torch.testing.assert_close(u, v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_cuda_equals_the_cpu_loop():
    gru, packed, _, h0 = _case([6, 4, 4, 1], dtype=torch.float32)
    sizes = packed.batch_sizes.tolist()
    cpu = packed_gru(packed.data, h0[0], gru, sizes)
    torch.testing.assert_close(packed_gru(packed.data.cuda(), h0[0].cuda(), gru.cuda(), sizes).cpu(), cpu,
                               rtol=1e-3, atol=1e-3)  # cuDNN may use TF32
