"""``python -m agent_lightning.cli`` (also what ``torchrun -m agent_lightning.cli`` starts on every rank)."""

import sys

from agent_lightning.cli.main import main

sys.exit(main())
