"""The parts of a Worker, one responsibility each (pqrun.worker wires them together).

- ``settings``: the worker's settings, from keywords and the environment, checked once;
- ``loops``: naming the tasks, the outage log and the shared error backoff;
- ``runs``: the claims a worker holds and the in-process states of one run;
- ``fetcher``: claims jobs into the buffer; ``executor``: the slots that run handlers;
- ``outcome``: what a run came to, in one vocabulary; ``outcome_writer``: writes it;
- ``listener``, ``liveness``, ``reaper``, ``pruner``, ``scheduler``, ``announcer``:
  the background loops; ``shutdown``: stopping in order.

Everything here is private: its names may change in any release.
"""
