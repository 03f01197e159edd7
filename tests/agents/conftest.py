import sys
from pathlib import Path

# The trainer imports agent entrypoints by name: make this folder's modules importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))
