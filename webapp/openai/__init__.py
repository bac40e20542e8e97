"""The OpenAI-compatible API (`/v1/models`, `/v1/images*`, `/v1/videos*`), with FastVideo's
extensions and routes: routes, schemas, and their translation."""
