"""Studies: a grid of runs over a base experiment, judged by paired comparisons (docs/studies.md).

spec (the YAML schema) -> plan (jobs) -> runner (processes, skip what is done) -> table (one row per run)
-> stats (intervals, verdicts) -> report (summary.csv, verdicts.csv, README.md, figure.png).
"""
