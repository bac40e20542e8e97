"""Original single-file DiT releases (Flux.1 by Black Forest Labs, SD3 / SD3.5 by Stability AI):
transformer, and the text encoders and VAE some files bundle; fp8 and scaled-fp8 weights."""
