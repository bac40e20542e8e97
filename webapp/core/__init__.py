"""What every API surface shares: the service over the engine and the job table, errors and
HTTP plumbing, the request checks, and the inputs several surfaces take (images, file
references, LoRAs, VAE tiling), plus the OpenAPI document and `/health`."""
