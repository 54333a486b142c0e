"""What ships beside the library but is not the library: the ``sse-redis``
command (``cli``), its demo, benchmarks (``bench``, with the measurements in
``measure``), the example app and its page (``example_app``, ``web/``), the
simulated LLM corpus (``corpus``) and throwaway local servers (``servers``).
The test suite and ``benches/`` use them too.  Nothing in the library
imports from here."""
