"""Original Wan releases (Wan-AI/Wan2.1, Wan2.2 layout): transformer, T5 encoder and VAE files."""
