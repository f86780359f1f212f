"""The MLP a ktrdr strategy describes: hidden layers, activation, dropout, 3 logits out.

`model.architecture.output_activation` is accepted and ignored, as in ktrdr: the network
outputs logits and cross-entropy applies the softmax. Unknown activations fall back to relu,
as ktrdr does, rather than failing a run.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

NUM_CLASSES = 3

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def activation_name(name: str | None) -> str:
    """The activation actually used for `name` (relu when unknown)."""
    key = str(name or "relu").lower()
    return key if key in _ACTIVATIONS else "relu"


def build_mlp(
    input_size: int, hidden_layers: Sequence[int], activation: str, dropout: float
) -> nn.Sequential:
    """Linear -> activation -> dropout per hidden layer, then a linear layer to 3 classes."""
    layers: list[nn.Module] = []
    width = input_size
    for size in hidden_layers:
        layers.append(nn.Linear(width, int(size)))
        layers.append(_ACTIVATIONS[activation_name(activation)]())
        if dropout > 0:
            layers.append(nn.Dropout(float(dropout)))
        width = int(size)
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters, reported in `model_info`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
