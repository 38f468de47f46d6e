"""python -m agentkit.backends.supervisord.activator --config PATH"""

import sys

from .main import main

sys.exit(main())
