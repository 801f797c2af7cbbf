"""One module per source a node agent samples (NVML, amdsmi, the host, InfiniBand/RoCE,
the ranks' own records); each is a prometheus_client collector whose samples also go to
the run directory. Metric names come from mrcdiag/metrics.py."""
