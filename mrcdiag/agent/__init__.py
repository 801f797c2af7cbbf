"""What runs beside the job, one per node: the node agent (`node`: collectors, /metrics,
samples into the run directory) and the launcher (`launch`: the job's whole life cycle
under `mrcdiag launch`)."""
