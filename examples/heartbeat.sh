#!/bin/bash
# Heartbeat: proves the scheduler is alive.
# cron: * * * * *
echo "heartbeat from $(hostname) at $(date -u +%H:%M:%S.%N)"
