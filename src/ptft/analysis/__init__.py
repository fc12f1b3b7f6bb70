"""Analysis: aggregation of run results into tidy tables (`aggregate`), and the figures."""
