"""Reports: one interactive, self-contained HTML page per result, built from sections.

:mod:`attnlab.report.page` (the :class:`~attnlab.report.page.Report` every kind is built as, its
one template and stylesheet, figure export), :mod:`attnlab.report.figures` (the figures, made
with altair), and one builder per kind: :mod:`attnlab.report.scan`, :mod:`attnlab.report.edit`,
:mod:`attnlab.report.sweep`, :mod:`attnlab.report.circuits`. Results themselves are saved and loaded by :mod:`attnlab.results`.
"""
