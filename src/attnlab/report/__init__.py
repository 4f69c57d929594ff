"""Reports: self-contained HTML pages for results (:mod:`attnlab.report.html`)."""
