#!/bin/bash
# Sync with a partner API (demo: fails one time in three).
# cron: * * * * *
if [ $((RANDOM % 3)) -eq 0 ]; then
  echo "partner API answered 503" >&2
  exit 2
fi
echo "synced $((RANDOM % 100)) records"
