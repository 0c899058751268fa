"""The internals of pqrun's user interfaces: the ``pqrun`` command, ``pqrun top`` and
the web dashboard. Their public entry points stay in ``pqrun.cli``, ``pqrun.top`` and
``pqrun.webui``; nothing here is API."""
