"""Serve one OpenStack WSGI application with waitress. Runs with a bed venv's python.

OpenStack's WSGI modules (neutron, nova, glance...) parse sys.argv with oslo.config when they
are imported, so the server's own settings come from the environment and sys.argv is emptied
first: ``ASTARA_WSGI_APP`` (``module`` or ``module:attribute``, default attribute
``application``), ``ASTARA_WSGI_BIND`` (``host:port``, an IPv6 host in brackets) and
``ASTARA_WSGI_THREADS``.
"""

import importlib
import os
import sys

module, _, attribute = os.environ["ASTARA_WSGI_APP"].partition(":")
host, _, port = os.environ["ASTARA_WSGI_BIND"].rpartition(":")
threads = int(os.environ.get("ASTARA_WSGI_THREADS", "8"))
sys.argv = sys.argv[:1]
# This file's directory is not a package root: nothing there may shadow the venv's modules.
sys.path.remove(os.path.dirname(os.path.abspath(__file__)))

import waitress  # noqa: E402

application = getattr(importlib.import_module(module), attribute or "application")
waitress.serve(application, host=host.strip("[]"), port=int(port), threads=threads, ident=module)
