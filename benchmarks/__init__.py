"""bitfed's benchmarks: one script per question, each writing ``benchmarks/results/<name>.json``.

``python -m benchmarks.run_all [--quick]`` runs them all and regenerates ``BENCHMARKS.md`` from
the JSON files alone (:mod:`benchmarks.report`). Every script calls the product's own code
(``core.memory``, ``launch.sim``, ``server.strategy``); none reimplements what it measures.
"""

__all__: list[str] = []
