"""Everything that talks to AWS: one session helper (session.py) used by every module below it."""
