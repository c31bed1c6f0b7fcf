"""The real-Nextcloud test lane (see lane.py)."""
