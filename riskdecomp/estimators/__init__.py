"""Arrays -> numbers: the probe and its solvers, the risk decomposition, few-shot errors, uncertainty scores
and their metrics, active learning, representation statistics.
"""
