"""The analysis side: run records -> tables, figures, the claims' verdicts and the report
(``python -m brn_repro.analysis.aggregate``), and the W&B dashboard. Nothing that trains
imports it; it reads what training wrote."""
