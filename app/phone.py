"""Phone-number syntax shared by the configuration and the request models."""

from __future__ import annotations

import re

E164 = re.compile(r"\+[1-9][0-9]{1,14}")  # ASCII digits only: \d would admit other scripts
