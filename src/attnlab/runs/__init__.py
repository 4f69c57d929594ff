"""Runs: everything that runs a model. Probes observe and edits act; a run drives them.

- :mod:`attnlab.runs.scan`: ``attnlab.scan`` (the ``attnlab scan`` command): probes over texts,
  repeated random tokens and needle trials;
- :mod:`attnlab.runs.edit`: bind edits to a model, prepare them on an input, ``run_edit`` (the
  ``attnlab edit`` command);
- :mod:`attnlab.runs.calibrate`: calibrate an edit as it declares (probe passes or a search over
  candidate edits: ACT's per-head rule), VHD/VHR head selection;
- :mod:`attnlab.runs.evaluate`: before/after measurements (perplexity, needle recall, logit
  difference) and ``compare``;
- :mod:`attnlab.runs.needle`: needle-in-a-haystack trials with greedy decoding;
- :mod:`attnlab.runs.knockout`: attention knockout over a sliding window of layers.

Edits and probes never import :mod:`attnlab.models` nor call a model; what they need to see
first they declare through the events of :class:`attnlab.core.Edit` and :class:`attnlab.core.Probe`.
"""
