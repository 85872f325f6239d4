"""Audit any recommender's top-K lists for fairness (issue 15).

`audit(Options(...))` -> report dict; `write_outputs(report, out)` writes
report.json, report.md and PNG figures atomically. Modules: `blocks`
(delimited files in blocks), `tables` (attribute tables, interactions),
`recs` (the lists, streamed), `compute` (one pass over user blocks),
`report` (definitions and the report dict), `render` (markdown, figures),
`synthetic` (large synthetic inputs), `export` (our own models' top-K as
RecBole files). Launcher: `python -m launch.audit`.
"""

from fairjax.audit.core import Options, audit, write_outputs

__all__ = ["Options", "audit", "write_outputs"]
