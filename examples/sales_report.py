#!/usr/bin/env python3
"""Sales report: aggregates a few numbers (demo: allocates ~60 MB for a few seconds).

cron: * * * * *
"""
import time

data = bytearray(60 * 1024 * 1024)
data[::4096] = b"x" * len(data[::4096])
time.sleep(2)
print(f"report built from {len(data) // 1024 // 1024} MB of data")
