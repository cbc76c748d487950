"""Side-by-side benchmarks of edge-infer: ``python -m bench NAME [--quick]`` (see ``__main__``).

Every goal is a ratio measured in one run (alternating fresh processes or interleaved rounds,
medians), never an absolute time: the development machines are small and shared.
"""
