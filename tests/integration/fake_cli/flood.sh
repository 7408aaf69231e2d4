#!/bin/sh
# Floods stdout with BYTES bytes of 'x', then writes a line to stderr.
#   flood.sh BYTES
head -c "$1" /dev/zero | tr '\0' x
echo "flood done" >&2
