#!/bin/bash
# Backup of the application database (demo: sleeps and writes to /dev/null).
# cron: */2 * * * *
set -eu
echo "backup started"
head -c 50000000 /dev/zero | gzip -1 > /dev/null
sleep 3
echo "backup finished"
