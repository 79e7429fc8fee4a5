"""The HTTP edge: the Litestar app and its routes (the job route, discovery, health,
metrics, OpenAPI), the command line and its worker processes.

The top layer: it may import every layer below (`jobs`, `providers`, `operations`,
`config`, `errors`, `types`), and nothing imports it but `css_core.testing`.
"""
