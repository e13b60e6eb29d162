"""``python -m bioexp.sample ckpt_path=<run dir>/checkpoints/<best>.ckpt n=64``: prior samples as an image grid.

Draws K bits from the Bernoulli(0.5) prior (for an ECC model: encodes them, optionally flips code bits
with probability ``eps``, and majority-votes them back), decodes them, and writes the pixel
probabilities (or, with ``binary=true``, one Bernoulli draw of them) as ``plots/samples.png`` in the
checkpoint's run dir (or ``out=<dir>``). Options: ``n`` (64), ``seed`` (0), ``eps`` (0), ``binary``, ``out``.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from bioexp.errors import BioexpError
from bioexp.utils.run import parse_options, report_user_errors

DEFAULTS = {"ckpt_path": None, "n": 64, "seed": 0, "eps": 0.0, "binary": False, "out": None}


def sample_grid(ckpt_path: str | Path, n: int = 64, seed: int = 0, eps: float = 0.0, binary: bool = False,
                out: str | Path | None = None) -> Path:
    """Write the grid of ``n`` samples and return its path."""
    import torch
    import torch.nn.functional as F
    from torchvision.utils import save_image

    from bioexp.evaluate import load_checkpoint_meta
    from bioexp.tasks.base import task_class

    task = task_class(load_checkpoint_meta(ckpt_path)["provenance"]["task"])
    if not hasattr(task, "sample"):
        raise BioexpError(f"{ckpt_path} holds a {task.__name__}, which cannot sample; pass a binary VAE checkpoint")
    if not isinstance(n, int) or n < 1:
        raise BioexpError(f"n must be a positive number of samples, got {n}")
    if not isinstance(eps, int | float) or not 0 <= eps < 1:  # a negative eps would silently mean no noise
        raise BioexpError(f"eps must be a bit-flip probability in [0, 1), got {eps!r}")
    model = task.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True).eval()
    generator = torch.Generator().manual_seed(seed)
    images = model.sample(n, eps=eps, generator=generator)
    if binary:
        images = torch.bernoulli(images, generator=generator)
    if not model.hparams.get("image_shape"):
        raise BioexpError(f"{ckpt_path} does not record its image shape; "
                          "sample from a checkpoint written by bioexp.train")
    height, width = model.hparams.image_shape
    images = images.reshape(n, 1, height, width)
    images = F.interpolate(images, scale_factor=math.ceil(28 / height), mode="nearest")  # 8x8 digits: 32x32 tiles
    path = Path(out) if out else Path(ckpt_path).resolve().parent.parent / "plots"
    path.mkdir(parents=True, exist_ok=True)
    path = path / "samples.png"
    save_image(images, path, nrow=math.ceil(math.sqrt(n)), pad_value=0.5)
    return path


@report_user_errors
def main(argv: list[str] | None = None) -> Path:
    args = parse_options(DEFAULTS, argv)
    if not args.ckpt_path:
        raise BioexpError("ckpt_path is required: python -m bioexp.sample ckpt_path=<run dir>/checkpoints/<x>.ckpt")
    path = sample_grid(**OmegaConf.to_container(args))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
