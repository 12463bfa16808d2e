"""The neural-art problem of Andrychowicz et al. (2016), section 3.4: style transfer as a distribution of problems.

A problem optimizes an image ``x`` (``3 x S x S`` pixels, the coordinates) for

    f(x) = content_weight * mean_c (F_c(x) - F_c(content))^2
         + style_weight   * sum_l mean (G_l(x) - G_l(style))^2
         + tv_weight      * (mean (x[:, i+1, j] - x[:, i, j])^2 + mean (x[:, i, j+1] - x[:, i, j])^2)

(Gatys et al. 2016's losses, means instead of sums so that the terms do not
grow with the resolution), ``F_l`` the feature maps of layer ``l`` and
``G_l = F_l F_l^T / (h_l w_l)`` their Gram matrices. All problems share one
style image; each has its own content image; ``x_0`` is uniform noise in [0, 1].

Features: the convolutional layers of VGG-16 / VGG-19 when the user has
torchvision's ImageNet weights locally (``vgg_weights``: a ``vgg16`` / ``vgg19``
``state_dict`` file; content ``relu4_2``, style ``relu1_1 .. relu4_1``, inputs
normalized with the ImageNet mean and std), otherwise a fixed, randomly
initialized network (:func:`random_features`, seeded): three 3x3 ReLU conv
layers of 32, 64 and 64 filters with 2x2 average pooling between them, style
from all three, content from the last. Random-filter networks are known to
support texture and style synthesis (Ustyuzhaninov et al. 2017, "What does it
take to generate natural textures?", ICLR; He, Wang & Hopcroft 2016, "A
powerful generative model using random weights for the deep image
representation", NIPS); pretrained features give better-looking results.

Images, offline: content images are glyphs (:mod:`fewshot_l2l.data.glyphs`)
rendered at the problem's resolution, ink and background in random colours over
a random colour gradient; ``train`` / ``tune`` / ``test`` use disjoint glyph classes.
The style image is a procedural pattern of coloured stripes and rings defined
on [0, 1]^2, so that it is the same picture at any resolution. A user folder
(``content_dir``: PNG / JPEG files, every 5th file to ``test``, the next to
``tune``) and a user style image (``style_image``) replace them. The paper
trained at 64x64 and tested also at 128x128: ``image_size`` sets the resolution.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.glyphs import make_glyph_splits
from .layout import ParamLayout
from .problems import SPLITS, _split_generator

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
VGG_CONFIGS = {13: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
               16: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class FeatureExtractor(nn.Module):
    """Frozen conv layers; :meth:`forward` returns ``(content features, [style features])``.

    Args:
        layers: ``nn.Conv2d`` modules and ``"M"`` (max pool) / ``"A"`` (average pool) markers, each conv followed by ReLU.
        content_layer, style_layers: indices (among the convs, 0-based) of the layers used.
        mean, std: per-channel input normalization.
    """

    def __init__(self, layers: list, content_layer: int, style_layers: tuple[int, ...],
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.plan = [layer if isinstance(layer, str) else "C" for layer in layers]
        self.convs = nn.ModuleList([layer for layer in layers if not isinstance(layer, str)])
        self.content_layer, self.style_layers = content_layer, style_layers
        self.last = max(content_layer, *style_layers)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        h, conv, content, style = (images - self.mean) / self.std, 0, None, []
        for step in self.plan:
            if step == "C":
                h = torch.relu(self.convs[conv](h))
                content = h if conv == self.content_layer else content
                if conv in self.style_layers:
                    style.append(h)
                if conv == self.last:
                    break
                conv += 1
            else:
                h = (F.max_pool2d if step == "M" else F.avg_pool2d)(h, 2)
        return content, style


def random_features(seed: int = 0) -> FeatureExtractor:
    """The fixed random network (module docstring): He-normal weights, zero biases, from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    layers, c_in = [], 3
    for index, c_out in enumerate((32, 64, 64)):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2.0 / (c_in * 9)))
            conv.bias.zero_()
        layers += [conv] + (["A"] if index < 2 else [])
        c_in = c_out
    return FeatureExtractor(layers, content_layer=2, style_layers=(0, 1, 2))


def vgg_features(path: str | Path) -> FeatureExtractor:
    """VGG-16 / VGG-19 conv layers from torchvision's ``state_dict`` file ``path`` (keys ``features.<i>.weight``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vgg_features: --vgg-weights {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        conv_keys = sorted((int(key.split(".")[1]) for key in state if key.startswith("features.") and key.endswith(".weight")))
        config = VGG_CONFIGS[len(conv_keys)]
    except (KeyError, ValueError, RuntimeError, AttributeError, IndexError) as error:
        raise ValueError(f"vgg_features: {path} is not a torchvision vgg16 / vgg19 state_dict (features.<i>.weight "
                         f"of 13 or 16 conv layers): {error}") from error
    layers, c_in, index = [], 3, 0
    for item in config:
        if item == "M":
            layers.append("M")
            index += 1
            continue
        conv = nn.Conv2d(c_in, item, 3, padding=1)
        conv.load_state_dict({"weight": state[f"features.{index}.weight"], "bias": state[f"features.{index}.bias"]})
        layers.append(conv)
        c_in, index = item, index + 2  # conv, ReLU
    # Convs 0-based: relu1_1 = 0, relu2_1 = 2, relu3_1 = 4; relu4_1 / relu4_2 = 7 / 8 (VGG-16) and 8 / 9 (VGG-19).
    relu4_1 = 7 if len(conv_keys) == 13 else 8
    return FeatureExtractor(layers, content_layer=relu4_1 + 1, style_layers=(0, 2, 4, relu4_1),
                            mean=IMAGENET_MEAN, std=IMAGENET_STD)


def gram(features: Tensor) -> Tensor:
    """``F F^T / (h w)`` of ``features`` ``[n, C, h, w]``: ``[n, C, C]``."""
    flat = features.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[2]


def style_pattern(size: int) -> Tensor:
    """The default style image ``[3, size, size]`` in [0, 1]: coloured diagonal stripes and rings (resolution-free)."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * 6 * (x + y))
    rings = 0.5 + 0.5 * torch.cos(2 * math.pi * 9 * torch.sqrt((x - 0.3) ** 2 + (y - 0.6) ** 2))
    return torch.stack((0.9 * stripes + 0.1 * rings, 0.3 + 0.4 * rings * stripes, 1.0 - 0.8 * stripes)).clamp(0, 1)


def glyph_contents(image_size: int, count: dict[str, int], seed: int) -> dict[str, Tensor]:
    """Coloured glyph images ``[N, 3, S, S]`` per split (module docstring), deterministic in ``seed``."""
    glyphs = make_glyph_splits({"train": count["train"], "val": count["tune"], "test": count["test"]}, 1, image_size, seed)
    out = {}
    for split, name in zip(SPLITS, ("train", "val", "test")):
        ink = glyphs[name].images.float().div(255.0)  # [N, 1, S, S]
        gen = _split_generator("glyph_contents", split, seed)
        n = ink.shape[0]
        colours = torch.rand(n, 3, 3, 1, 1, generator=gen)  # ink, background top-left, background bottom-right
        ramp = torch.linspace(0, 1, image_size)
        ramp = ((ramp[:, None] + ramp[None, :]) / 2)[None, None]
        background = colours[:, 1] * (1 - ramp) + colours[:, 2] * ramp
        out[split] = background * (1 - ink) + colours[:, 0] * ink
    return out


def load_image(path: Path, image_size: int) -> Tensor:
    """An image file as ``[3, S, S]`` in [0, 1] (resized to a square)."""
    from PIL import Image  # Pillow comes with matplotlib

    with Image.open(path) as image:
        image = image.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
        return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3).permute(2, 0, 1).float() / 255


def folder_contents(folder: str | Path, image_size: int) -> dict[str, Tensor]:
    """The images of ``folder`` per split: sorted by name, every 5th to ``test``, the next to ``tune``, the rest ``train``."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(folder).is_dir() else []
    if len(files) < 5:
        raise ValueError(f"NeuralArtProblems: content_dir {folder} needs at least 5 PNG / JPEG images, found {len(files)}")
    groups = {"test": files[0::5], "tune": files[1::5], "train": [f for i, f in enumerate(files) if i % 5 > 1]}
    return {split: torch.stack([load_image(f, image_size) for f in groups[split]]) for split in SPLITS}


class NeuralArtBatch:
    """``n`` images to stylize: ``theta`` ``[n, 3 S S]``; targets precomputed (no gradient)."""

    def __init__(self, contents: Tensor, style: Tensor, theta0: Tensor, features: FeatureExtractor,
                 weights: tuple[float, float, float]) -> None:
        self.contents, self.style, self.theta0, self.features = contents, style, theta0, features
        self.content_weight, self.style_weight, self.tv_weight = weights
        self.n_problems, self.n_params = theta0.shape
        self.layout = ParamLayout((self.n_params,))
        self.image_shape = tuple(contents.shape[1:])
        with torch.no_grad():
            self.content_target = features(contents)[0]
            self.style_grams = [gram(f) for f in features(style[None])[1]]

    def initial_theta(self) -> Tensor:
        return self.theta0.clone()

    def images(self, theta: Tensor) -> Tensor:
        return theta.view(theta.shape[0], *self.image_shape)

    def loss(self, theta: Tensor, step: int) -> Tensor:
        x = self.images(theta)
        content, style = self.features(x)
        content_loss = (content - self.content_target).pow(2).flatten(1).mean(1)
        style_loss = sum((gram(f) - g).pow(2).flatten(1).mean(1) for f, g in zip(style, self.style_grams))
        tv = (x[:, :, 1:] - x[:, :, :-1]).pow(2).flatten(1).mean(1) + (x[..., 1:] - x[..., :-1]).pow(2).flatten(1).mean(1)
        return self.content_weight * content_loss + self.style_weight * style_loss + self.tv_weight * tv


class NeuralArtProblems:
    """Stylize a content image in the one style (module docstring); a problem = one content image and a noise start.

    Args:
        image_size: side ``S`` of the images (64 as the paper's training; 128 to test at twice it).
        vgg_weights: torchvision vgg16 / vgg19 ``state_dict`` file; ``None``: the random network.
        content_dir: folder of content images; ``None``: coloured glyphs.
        style_image: the style image file; ``None``: :func:`style_pattern`.
        content_weight, style_weight, tv_weight: the weights of the three terms.
        contents_per_split: glyph content images of ``train`` / ``tune`` / ``test``.
        device: where problems live. seed: seed of the glyphs and the random network.
    """

    name = "neural-art"

    def __init__(self, image_size: int = 64, vgg_weights: str | None = None, content_dir: str | None = None,
                 style_image: str | None = None, content_weight: float = 1.0, style_weight: float = 10.0,
                 tv_weight: float = 0.1, contents_per_split: dict[str, int] | None = None,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        if image_size < 8:
            raise ValueError(f"NeuralArtProblems: image_size must be >= 8, got {image_size}")
        if min(content_weight, style_weight, tv_weight) < 0:
            raise ValueError("NeuralArtProblems: content_weight, style_weight and tv_weight must be >= 0")
        self.device, self.image_size = torch.device(device), image_size
        self.weights = (content_weight, style_weight, tv_weight)
        self.features = (random_features(seed) if vgg_weights is None else vgg_features(vgg_weights)).to(self.device)
        count = contents_per_split or {"train": 200, "tune": 30, "test": 30}
        contents = glyph_contents(image_size, count, seed) if content_dir is None else folder_contents(content_dir, image_size)
        self.contents = {split: images.to(self.device) for split, images in contents.items()}
        style = style_pattern(image_size) if style_image is None else load_image(Path(style_image), image_size)
        self.style = style.to(self.device)

    @property
    def n_params(self) -> int:
        return 3 * self.image_size ** 2

    def sample(self, n: int, seed: int, split: str = "train") -> NeuralArtBatch:
        if n < 1:
            raise ValueError(f"NeuralArtProblems.sample: n must be >= 1, got {n}")
        gen = _split_generator("NeuralArtProblems.sample", split, seed)
        pool = self.contents[split]
        chosen = torch.randint(0, pool.shape[0], (n,), generator=gen)
        theta0 = torch.rand(n, self.n_params, generator=gen).to(self.device)
        return NeuralArtBatch(pool[chosen.to(self.device)], self.style, theta0, self.features, self.weights)


def save_art_grid(batch: NeuralArtBatch, theta: Tensor, path: str, rows: int = 4) -> None:
    """A PNG of ``rows`` problems, each row content | result (``theta``) | style (pixels clamped to [0, 1])."""
    from ..plots import new_figure, save_png

    rows = min(rows, batch.n_problems)
    figure, axes = new_figure(rows, 3, (6, 2 * rows))
    results = batch.images(theta.detach()).clamp(0, 1)
    for row in range(rows):
        for col, (title, image) in enumerate((("content", batch.contents[row]), ("result", results[row]),
                                              ("style", batch.style))):
            axes[row, col].imshow(image.permute(1, 2, 0).cpu().numpy())
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(title)
    figure.tight_layout()
    save_png(figure, path)
