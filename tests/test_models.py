"""The notebook's network and its losses, checked against hand computations."""

import pytest
import torch
from torch import nn

from mnistlab.base.models import architecture, build_model, log_probabilities, loss_function


def notebook_mlp(output="logits"):
    return build_model(architecture("mlp", (1, 28, 28), 10, output=output))


def test_mlp_is_the_notebooks_network():
    linears = [m for m in notebook_mlp() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 128), (128, 64), (64, 10)]
    assert sum(isinstance(m, nn.ReLU) for m in notebook_mlp()) == 2
    assert isinstance(notebook_mlp("log_softmax")[-1], nn.LogSoftmax)


def test_mlp_accepts_images_and_flat_vectors():
    model = notebook_mlp()
    x = torch.randn(5, 1, 28, 28)
    assert torch.equal(model(x), model(x.view(5, -1)))
    assert model(x).shape == (5, 10)


def test_log_softmax_output_gives_probabilities_that_sum_to_one():
    model = notebook_mlp("log_softmax")
    ps = torch.exp(model(torch.randn(4, 784)))
    torch.testing.assert_close(ps.sum(dim=1), torch.ones(4))


def test_cross_entropy_on_logits_equals_nll_on_log_softmax():
    logits, y = torch.randn(64, 10), torch.randint(0, 10, (64,))
    ce = nn.CrossEntropyLoss()(logits, y)
    nll = nn.NLLLoss()(nn.LogSoftmax(dim=1)(logits), y)
    torch.testing.assert_close(ce, nll)
    assert loss_function("log_softmax").__class__ is nn.NLLLoss
    assert loss_function("logits", label_smoothing=0.1).__class__ is nn.CrossEntropyLoss


def test_log_probabilities_agree_between_output_kinds():
    torch.manual_seed(0)
    a = notebook_mlp("logits")
    b = notebook_mlp("log_softmax")
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 784)
    torch.testing.assert_close(log_probabilities(a, "logits", x), log_probabilities(b, "log_softmax", x))


@pytest.mark.parametrize("model, side", [("mlp", 28), ("cnn", 8)])
def test_gradcheck_in_float64(model, side):
    """Autograd's gradients equal finite differences (the cnn on small images: each input is a check)."""
    torch.manual_seed(0)
    arch = architecture(model, (1, side, side), 10, hidden=(6, 5), output="log_softmax")
    net = build_model(arch).double().eval()  # eval: batch norm uses running statistics, dropout is off
    x = torch.randn(1, 1, side, side, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,), eps=1e-6, atol=1e-5)


def test_one_sgd_step_is_w_minus_lr_times_grad():
    torch.manual_seed(0)
    model = notebook_mlp("log_softmax")
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    lr = 0.003
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    nn.NLLLoss()(model(x), y).backward()
    optimizer.step()
    for w0, p in zip(before, model.parameters()):
        torch.testing.assert_close(p.detach(), w0 - lr * p.grad)


def test_hidden_sizes_and_activation_are_configurable():
    arch = architecture("mlp", (1, 28, 28), 10, hidden=(32, 16, 8), activation="tanh")
    model = build_model(arch)
    sizes = [m.out_features for m in model if isinstance(m, nn.Linear)]
    assert sizes == [32, 16, 8, 10]
    assert any(isinstance(m, nn.Tanh) for m in model)


def test_cnn_output_shape():
    model = build_model(architecture("cnn", (1, 28, 28), 10))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_bad_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="bad architecture"):
        build_model({"model": "transformer"})


def test_every_activation_a_config_accepts_has_a_module():
    from mnistlab.base.config import ACTIVATIONS
    from mnistlab.base.models import ACTIVATION_MODULES

    assert set(ACTIVATIONS) == set(ACTIVATION_MODULES)
