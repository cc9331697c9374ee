"""Serve Neutron's WSGI API with waitress. Runs with the test bed venv's python, not Astara's.

Neutron parses sys.argv with oslo.config when its application is imported, so the server's
own settings come from the environment and sys.argv is emptied first.
"""

import os
import sys

host, _, port = os.environ["ASTARA_NEUTRON_BIND"].rpartition(":")
sys.argv = sys.argv[:1]

import waitress  # noqa: E402
from neutron.wsgi.api import application  # noqa: E402

waitress.serve(application, host=host, port=int(port), threads=8, ident="neutron")
