"""Test configuration: hypothesis profiles.

* ``dev`` (default): 100 examples per property, for a quick local loop.
* ``ci`` (chosen automatically when ``CI`` is set): 200 examples per property.
* ``thorough``: 2,000 examples, for a long run before a release.

Pick one explicitly with ``STEPFLOW_HYPOTHESIS_PROFILE=thorough pytest``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=100, **_common)
settings.register_profile("ci", max_examples=200, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=2000, **_common)

_default = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("STEPFLOW_HYPOTHESIS_PROFILE", _default))
