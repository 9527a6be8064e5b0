"""The peers the hub is compared with: each a small server file a Python team could write."""
