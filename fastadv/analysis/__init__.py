"""Analysis: reads only saved predictions (the CSVs and eval.json that `fastadv eval` writes, or
one CSV per model from another tool) and turns them into metrics, figures and the report.

Nothing here loads a model or needs a GPU, so a report can be rebuilt anywhere from the files.
"""
