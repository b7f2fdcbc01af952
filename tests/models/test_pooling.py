import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pfedlora.models.cnn import CNN, CNN_SPECS
from pfedlora.models.pooling import MaxPool2x2, max_pool_2x2


def _forward_backward(pool, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = pool(x)
    out.backward(grad)
    return out.detach(), x.grad


@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (2, 5, 7, 9), (3, 2, 28, 28), (1, 1, 3, 2)])
@pytest.mark.parametrize("ceil_mode", [False, True])
def test_matches_torch_bit_for_bit_with_ties(shape, ceil_mode):
    torch.manual_seed(0)
    # rounded ReLU outputs: most windows hold ties (zeros, equal integers), which decide the gradient's target
    x = torch.relu(torch.randn(shape) * 2).round()
    expected_out = F.max_pool2d(x, 2, ceil_mode=ceil_mode)
    grad = torch.randn_like(expected_out)
    out, grad_x = _forward_backward(lambda t: max_pool_2x2(t, ceil_mode), x, grad)
    ref_out, ref_grad = _forward_backward(lambda t: F.max_pool2d(t, 2, ceil_mode=ceil_mode), x, grad)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad_x, ref_grad)
    with torch.no_grad():
        assert torch.equal(max_pool_2x2(x, ceil_mode), ref_out)


def test_ties_go_to_the_first_element_in_scan_order():
    x = torch.tensor([[[[1.0, 3.0], [3.0, 3.0]]]], requires_grad=True)
    max_pool_2x2(x).sum().backward()
    assert x.grad.tolist() == [[[[0.0, 1.0], [0.0, 0.0]]]]


def test_cnn_trains_identically_to_torch_maxpool():
    torch.manual_seed(0)
    fast = CNN(CNN_SPECS["cnn2"], 3, 10)
    slow = copy.deepcopy(fast)
    slow.pool = nn.MaxPool2d(2)
    # the textbook order: ReLU, then torch's pool
    slow.represent = lambda x: _textbook_represent(slow, x)
    assert isinstance(fast.pool, MaxPool2x2)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    for model in (fast, slow):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(fast.parameters(), slow.parameters()))
    assert fast.state_dict().keys() == slow.state_dict().keys()


def test_relu_after_pool_equals_relu_before_pool_gradients_included():
    torch.manual_seed(1)
    z = torch.randn(4, 3, 10, 10)
    z[0, 0, :2, :2] = 0.0  # a window whose maximum is exactly zero
    z[1, 1, :2, :2] = -1.0  # an all-negative window
    grad = torch.randn(4, 3, 5, 5)
    before, grad_before = _forward_backward(lambda t: F.max_pool2d(torch.relu(t), 2), z, grad)
    after, grad_after = _forward_backward(lambda t: torch.relu(max_pool_2x2(t)), z, grad)
    assert torch.equal(before, after)
    assert torch.equal(grad_before, grad_after)


def _textbook_represent(model: CNN, x: torch.Tensor) -> torch.Tensor:
    x = model.pool(torch.relu(model.conv1(x)))
    x = model.pool(torch.relu(model.conv2(x)))
    x = torch.relu(model.fc1(torch.flatten(x, 1)))
    return torch.relu(model.fc2(x))


@pytest.mark.parametrize("ceil_mode", [False, True])
def test_second_order_gradients_equal_torchs(ceil_mode):
    # create_graph=True (FedL2G's meta-gradient through an SGD step) differentiates the backward itself
    torch.manual_seed(2)
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    results = []
    for pool in (lambda t: F.max_pool2d(t, 2, ceil_mode=ceil_mode), lambda t: max_pool_2x2(t, ceil_mode=ceil_mode)):
        out = pool(x * w)
        (grad_x,) = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
        (grad_w,) = torch.autograd.grad((grad_x * x).sum(), w)
        results.append((grad_x.detach(), grad_w))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-12, atol=1e-12)
