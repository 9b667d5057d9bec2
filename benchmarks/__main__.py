"""``python -m benchmarks`` (``make bench``): the sales workload benchmark; see
:mod:`benchmarks.sales_bench`."""

from benchmarks.sales_bench import main

main()
