"""brn-repro: reproduce Batch Renormalization (Ioffe, NeurIPS 2017, arXiv:1702.03275).

The package is cut the way data flows: ``norm`` (the layers), ``schedules``
(r_max / d_max / decay as functions of the step), ``models``, ``data``, the
training runner and the aggregation into figures and a report.
"""

__version__ = "0.1.0"
