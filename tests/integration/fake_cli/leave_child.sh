#!/bin/sh
# Exits 0 at once but leaves a child behind in its process group (holding
# stdout open); writes the child's pid to PIDFILE.
#   leave_child.sh PIDFILE
sleep 1000 &
echo "$!" > "$1"
echo "left a child"
