"""Test harness that tests, benchmarks, ``gtm demo`` and ``gtm drill providers`` share.

Not part of the product: no module of ``gtm`` outside this package imports it, except the CLI
(and ``gtm.demo``, which only the CLI's ``gtm demo`` imports) lazily inside a command. Everything
here binds to 127.0.0.1 only and stops what it started by its own PID.

- ``ports``: ``free_port()``, the one spare-port helper
- ``procs``: ``stop_process()``
- ``bind``: ``BindServer``, a throw-away BIND 9 primary (``named``)
- ``moto``: ``MotoServer`` (moto's Route 53 in a child process), ``ThreadedMoto`` (in a thread),
  ``moto_fixed()``/``MOTO_FIX`` (need ``moto[server]``)
- ``redis``: ``RedisProcess``, a private ``redis-server``
- ``scenario``: the four simulated regions, their config, fleets and agents (demo and drill)
- ``cluster``: a whole installation as separate processes (end-to-end tests, benchmarks)
- ``provider_drill``: ``gtm drill providers``

Harness only the test suite uses lives in ``tests/support/``.
"""
