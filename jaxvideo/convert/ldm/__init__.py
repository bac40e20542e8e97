"""Original LDM / A1111 single-file checkpoints of the SD families (SD 1.x, SD 2.x, SDXL base)."""
