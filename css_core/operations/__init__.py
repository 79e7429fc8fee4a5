"""Operations: what operators see of the jobs: each job's record, metrics, log lines, request
ids, and the spending budgets with their stores.

May import `css_core.config`, `css_core.errors` and `css_core.types` only: the layers
above hand it what it needs of them (the record takes the providers as `ServedProvider`s).
"""
