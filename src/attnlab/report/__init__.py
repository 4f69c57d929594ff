"""Reports: self-contained HTML pages for results, one module per kind.

:mod:`attnlab.report.html` (a scan, and the SVG heatmaps and bars), :mod:`attnlab.report.edit`
(an edit evaluation), :mod:`attnlab.report.sweep` (a sweep), :mod:`attnlab.report.plots` (line
charts). Results themselves are saved and loaded by :mod:`attnlab.results`.
"""
