"""Test and benchmark support shipped with the library, as ``numpy.testing`` is: small real-looking media
(``media``), embedding-like synthetic vectors with exact ground truth (``synthetic``), and random model
inputs of the right shapes (``inputs``). Nothing here is needed to index or search; the tests, the
benchmarks and anyone evaluating xsearch on their own machine use the same generators."""
