"""The model registry: every fact about each generator model, in one place, without importing torch.

The CLI, the basf2 module, the payload store, the bench, the precision engine and the consumer read it. A model
is its module ``pxdbg.models.<name>`` (a ``Model`` class and ``generate(model)``; sparse models also
``generate_sparse(net, rngs)``) plus one :class:`ModelInfo` entry in :data:`REGISTRY` below. Nothing else has
to change to add a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from pxdbg.shared.errors import ConfigError
from pxdbg.shared.geometry import N_SENSORS

GAN, SPARSE = "gan", "sparse"


@dataclass(frozen=True)
class ModelInfo:
    """What the rest of pxdbg needs to know about one model."""

    #: the name on the command line and in the model identity; the module is ``pxdbg.models.<name>``
    name: str
    #: ``"gan"``: a torch generator of images run by the precision engine; ``"sparse"``: draws digits directly
    kind: str
    #: one line for ``pxdbg models`` and the README
    summary: str
    #: True when pxdbg ships a default checkpoint (payload) for it; else the user brings one
    public_checkpoint: bool = False
    #: GANs: latent numbers per image
    latent_dim: int = 0
    #: GANs: ``forward(z, y)`` with the sensor labels ``y`` (0..39); one event's 40 images stay in one call
    conditional: bool = False
    #: GANs: state_dict prefix of the image-producing output convolution (the precision engine's special case)
    output_layer: str | None = None
    #: GANs: the generator's image shape (rows, columns) before the crop to 250 x 768
    image_shape: tuple[int, int] = (256, 768)
    #: images per event (one per sensor)
    images_per_event: int = N_SENSORS
    #: number of parameters of the network, for checks and the README
    parameters: int | None = None

    @property
    def is_gan(self) -> bool:
        return self.kind == GAN

    @property
    def module_name(self) -> str:
        return f"pxdbg.models.{self.name}"

    @property
    def payload(self) -> str:
        """The conditions-database payload name of the model's default checkpoint."""
        return f"PXDBackgroundGenerator_{self.name}"


REGISTRY: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            "convnet",
            GAN,
            "the published convolutional WGAN-GP generator",
            latent_dim=96,
            output_layer="features.20",
            parameters=20_444_865,
        ),
        ModelInfo(
            "resnet",
            GAN,
            "the published residual WGAN-GP generator",
            latent_dim=96,
            output_layer="conv",
            parameters=6_648_097,
        ),
        ModelInfo(
            "ieagan",
            GAN,
            "basf2's class-conditional IEA-GAN generator (draws each sensor as itself)",
            latent_dim=128,
            conditional=True,
            output_layer="output_layer.2",
            parameters=11_676_449,
        ),
        ModelInfo(
            "parametric",
            SPARSE,
            "a fast parametric model calibrated to simulated Belle II background",
            public_checkpoint=True,
        ),
    )
}

#: The embedded default: the one model whose checkpoint ships with pxdbg.
DEFAULT_MODEL = "parametric"


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> ModelInfo:
    """The entry of model ``name``, or a :class:`ConfigError` listing the models."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}; the models are: {', '.join(REGISTRY)}") from None
