"""Providers: the plugin contract (`hookspecs`), the registry of installed providers, the
core's own HTTP call and client, the OpenAI wire format many providers share, key pools,
and the OpenAI-compatible providers configured without a package.

May import `css_core.config`, `css_core.errors`, `css_core.types` and `css_core.operations`;
it knows nothing of jobs, Infernet, ABI or Litestar.
"""
