"""Training the demo models on the project's synthetic shapes (`jaxvideo.demo_data`).

`loop.py` is the optax loop every trainer shares: a jitted step over an nnx module's
parameters, a fixed number of steps, the loss curve kept. `sd_shapes.py` trains the
SD-1.x-architecture demo (VAE, CLIP text encoder, UNet) at 128x128 px. A trained model is
written in the converted-folder format every model uses, so serving it takes no special code.
"""
