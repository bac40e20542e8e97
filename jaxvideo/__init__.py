"""jaxvideo: image and video diffusion models in Flax NNX, served over HTTP.

`load_component(model_dir, name)` loads one converted network (`text_encoder`, `unet`, `vae`)
from a jaxvideo model folder; see the README for the call conventions.
"""

from jaxvideo.weights import load_component

__version__ = "0.1.0"

__all__ = ["__version__", "load_component"]
