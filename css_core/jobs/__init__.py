"""Jobs: the container contract's messages, decoding a job, the on-chain codec, and the job
pipeline (`pipeline.py`), with its attempts, retry policy, fallbacks and streams.

May import `css_core.config`, `css_core.errors`, `css_core.types`, `css_core.operations`
and `css_core.providers`; nothing of Litestar or the HTTP server.
"""
